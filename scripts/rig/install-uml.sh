#!/usr/bin/env bash
# User-mode Linux, the rig's way to real LVM (docs/testing.md). Debian bookworm's UML kernel
# (6.1) panics at its first process on a host CPU with AVX-512: its FPU state is bigger than
# that kernel hands to ptrace ("ptrace set fp regs failed, errno = 14"). Newer kernels size it
# from the host, so the kernel comes from Debian unstable, through apt (which checks the
# archive's signatures), with the C library it was built against. Both are unpacked into the
# cache, not installed: patchelf points the kernel's ELF interpreter and library path at that
# C library, and the guest loads modules from the unpacked tree (the host's / is its root).
# test/rig/tools.ts finds it through bin/uml.version.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=versions.sh
source "$here/versions.sh"

log() { printf '[rig-install] %s\n' "$*" >&2; }

cache=$(lvp_tools_dir)
version_file="$cache/bin/uml.version"
if [ -f "$version_file" ] && [ -x "$cache/bin/uml-$(cat "$version_file")/linux.uml" ]; then
  log "user-mode-linux $(cat "$version_file"): cached at $cache/bin/uml-$(cat "$version_file")"
  exit 0
fi

mkdir -p "$cache/bin" "$cache/logs"
apt_log="$cache/logs/uml-apt.log"
work=$(mktemp -d "$cache/build-uml.XXXXXX")
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/lists/partial" "$work/apt-cache/archives/partial" "$work/debs"
echo "deb http://deb.debian.org/debian $LVP_UML_SUITE main" >"$work/sources.list"
apt_options=(
  -o "Dir::Etc::SourceList=$work/sources.list"
  -o Dir::Etc::SourceParts=/dev/null
  -o "Dir::State::Lists=$work/lists"
  -o "Dir::Cache=$work/apt-cache"
  -o APT::Sandbox::User=root
)
log "user-mode-linux: fetching it and libc6 from Debian $LVP_UML_SUITE (log: $apt_log)"
if ! {
  apt-get "${apt_options[@]}" update && (cd "$work/debs" && apt-get "${apt_options[@]}" download user-mode-linux libc6)
} >"$apt_log" 2>&1; then
  log "user-mode-linux: apt FAILED, see $apt_log"
  tail -n 20 "$apt_log" >&2
  exit 1
fi

version=$(dpkg-deb --field "$work"/debs/user-mode-linux_*.deb Version)
dest="$cache/bin/uml-$version"
for deb in "$work"/debs/*.deb; do dpkg-deb --extract "$deb" "$work/root"; done
interpreter=$(find "$work/root" -name 'ld-linux-x86-64.so.2' -print -quit)
[ -n "$interpreter" ] || {
  echo "no ld-linux-x86-64.so.2 in the unpacked libc6" >&2
  exit 1
}
rm -rf "$dest"
mv "$work/root" "$dest.root.tmp"
mkdir -p "$dest"
mv "$dest.root.tmp" "$dest/root"
libraries=$(dirname "$dest/root${interpreter#"$work/root"}")
cp "$dest/root/usr/bin/linux.uml" "$dest/linux.uml.tmp"
patchelf --set-interpreter "$libraries/ld-linux-x86-64.so.2" --set-rpath "$libraries" "$dest/linux.uml.tmp"
mv "$dest/linux.uml.tmp" "$dest/linux.uml"
echo "$version" >"$version_file"
log "user-mode-linux $version: unpacked at $dest"
