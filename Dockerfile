# syntax=docker/dockerfile:1
# libvirt-volume-provisioner: one pod per hypervisor (DaemonSet). Multi-stage: the build
# stage checks the types and bundles src/ with its dependencies into dist/ (scripts/build.ts);
# the runtime stage holds Node 24, dist/ (no node_modules: the bundle has everything), and
# the tools the pipeline calls (qemu-img, lvm, virsh, nsenter).
# test/integration/chart.test.ts runs the build stage's commands and hadolint.

ARG NODE_IMAGE=node:24-bookworm-slim

FROM ${NODE_IMAGE} AS build
WORKDIR /src
COPY package.json package-lock.json ./
# Scripts stay off: the node@24 dev dependency only serves local runs (the image has Node 24),
# esbuild runs from its platform package without its postinstall, and no production
# dependency needs an install script. `npm install`, not `npm ci`, for the reason in
# scripts/ensure-node.sh (the lockfile lacks biome's other-platform packages, which `npm ci`
# refuses); it still installs exactly the locked versions.
RUN npm install --ignore-scripts --no-audit --no-fund
COPY tsconfig.json tsconfig.build.json ./
COPY scripts/build.ts ./scripts/
COPY src ./src
RUN npx tsc -p tsconfig.build.json \
 && node scripts/build.ts

FROM ${NODE_IMAGE}
ARG VERSION=0.1.0
ARG REVISION=unknown
ARG CREATED=unknown
LABEL org.opencontainers.image.title="libvirt-volume-provisioner" \
      org.opencontainers.image.description="Provisions VM disk images from MinIO/S3 into LVM volumes for libvirt" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.created="${CREATED}" \
      org.opencontainers.image.source="https://github.com/libvirt-volume-provisioner/libvirt-volume-provisioner" \
      org.opencontainers.image.documentation="https://github.com/libvirt-volume-provisioner/libvirt-volume-provisioner/blob/main/README.md" \
      org.opencontainers.image.licenses="Apache-2.0"
# qemu-utils: qemu-img; lvm2: lvm; libvirt-clients: virsh; util-linux: nsenter for running
# LVM in the host's namespaces (lvmCommandPrefix). Versions come with the pinned base image's
# Debian release; pinning each package would break the build whenever Debian ships a fix.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends qemu-utils lvm2 libvirt-clients util-linux ca-certificates \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /app
COPY --from=build /src/dist ./dist
COPY package.json ./
# Runs as root: lvcreate and writing to block devices need it (the chart's DaemonSet explains
# the privileges). LC_ALL=C keeps lvm and qemu-img output parseable. GLIBC_TUNABLES, measured
# with bench/ (peak RSS from 144-152 MB to 137-138 MB, same download speed):
# - mmap_threshold fixed at glibc's default 128 KiB: left dynamic, it rises after the first
#   large free, and from then on network buffers come from the heap, whose freed memory stays
#   resident (a 64 KiB threshold saved as much but downloaded about 20 % slower);
# - arena_max=2: buffers allocated on one thread (libuv's, V8's) and freed on another no
#   longer leave memory behind in up to 8 arenas per core.
# jemalloc and mimalloc (Debian's, through LD_PRELOAD) were no smaller on 2026-12-03: one
# run each of the bench's memory, endurance and link scenarios gave peaks of 115, 150 and
# 145 MB with these tunables, 117-126, 154-166 and 141-155 MB with either (jemalloc also
# with background_thread, dirty_decay_ms:1000, muzzy_decay_ms:0 and narenas:2).
ENV NODE_ENV=production LC_ALL=C GLIBC_TUNABLES=glibc.malloc.mmap_threshold=131072:glibc.malloc.arena_max=2
EXPOSE 8080
# A young generation of 1 MiB semi-spaces instead of V8's default (up to 16 MiB each) keeps
# the controller about 40 MB smaller (bench/, peak RSS) at no measurable cost in throughput:
# the data path moves bytes in Buffers, outside the JS heap, and frequent scavenges free
# the received network buffers sooner. No --enable-source-maps: it keeps the bundle's source
# map in memory, and the bundle keeps every function's name for stack traces. bench/ and
# test/integration/observability.test.ts start the controller with exactly these arguments.
ENTRYPOINT ["node", "--max-semi-space-size=1", "dist/main.js"]
