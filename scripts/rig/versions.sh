# Versions of the real components the rig uses, and where their builds are cached.
# Sourced by install-tools.sh; test/rig/tools.ts reads the same lines. MinIO publishes no
# semver tags, so it is pinned to the Go module proxy's pseudo-version of a commit.
LVP_KUBERNETES_VERSION=v1.36.3
LVP_ETCD_VERSION=v3.6.14
LVP_MINIO_VERSION=v0.0.0-20260212201848-7aac2a2c5b7c
LVP_HELM_VERSION=v3.21.4
LVP_HADOLINT_VERSION=2.15.1
LVP_DEBIAN_PACKAGES=(qemu-utils lvm2 busybox-static patchelf prometheus libvirt-clients curl openssl xfsprogs)
# User-mode Linux comes from this suite, not bookworm (install-uml.sh says why); unstable keeps
# no old versions, so the cache keeps whichever version it first fetched.
LVP_UML_SUITE=sid

lvp_tools_dir() {
  echo "${LVP_TOOLS_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/libvirt-volume-provisioner}"
}
