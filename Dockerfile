# syntax=docker/dockerfile:1
# libvirt-volume-provisioner: one pod per hypervisor (DaemonSet). Multi-stage: the build
# stage compiles TypeScript; the runtime stage holds Node 24, production dependencies, the
# compiled dist/, and the tools the pipeline calls (qemu-img, lvm, virsh, dd, nsenter).

FROM node:24-bookworm-slim AS build
WORKDIR /src
COPY package.json package-lock.json ./
# node@24 (dev dependency) only serves local runs; the image already has Node 24.
RUN npm ci --ignore-scripts --no-audit --no-fund
COPY tsconfig.json tsconfig.build.json ./
COPY src ./src
RUN npx tsc -p tsconfig.build.json \
 && npm prune --omit=dev --ignore-scripts

FROM node:24-bookworm-slim
ARG VERSION=0.1.0
LABEL org.opencontainers.image.title="libvirt-volume-provisioner" \
      org.opencontainers.image.description="Provisions VM disk images from MinIO/S3 into LVM volumes for libvirt" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.licenses="Apache-2.0"
# qemu-utils: qemu-img; lvm2: lvm; libvirt-clients: virsh; coreutils: dd for page cache
# eviction; util-linux: nsenter for running LVM in the host's namespaces.
RUN apt-get update \
 && apt-get install -y --no-install-recommends qemu-utils lvm2 libvirt-clients coreutils util-linux ca-certificates \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /app
COPY --from=build /src/node_modules ./node_modules
COPY --from=build /src/dist ./dist
COPY package.json ./
ENV NODE_ENV=production LC_ALL=C
ENTRYPOINT ["node", "--enable-source-maps", "dist/main.js"]
