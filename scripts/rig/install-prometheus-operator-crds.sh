#!/usr/bin/env bash
# Fetches the Prometheus Operator CRDs (ServiceMonitor, PrometheusRule, ...) so that the chart
# test can load them into the rig's API server and dry-run the chart's ServiceMonitor and
# PrometheusRule against their real schema. They come from the Go module proxy: the
# prometheus-operator module ships them in example/prometheus-operator-crd/. Cached under the
# rig's tools dir, keyed by version; prints the directory holding the YAML files.
set -euo pipefail

LVP_PROMETHEUS_OPERATOR_VERSION=v0.85.0

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=versions.sh
source "$here/versions.sh"

dest="$(lvp_tools_dir)/prometheus-operator-crds-$LVP_PROMETHEUS_OPERATOR_VERSION"
if [ ! -f "$dest/.complete" ]; then
  module=github.com/prometheus-operator/prometheus-operator
  # Puts the module into Go's module cache and prints where ("Dir").
  dir=$(go mod download -json "$module@$LVP_PROMETHEUS_OPERATOR_VERSION" |
    sed -n 's/^\s*"Dir": "\(.*\)",$/\1/p')
  if [ -z "$dir" ] || [ ! -d "$dir/example/prometheus-operator-crd" ]; then
    echo "install-prometheus-operator-crds: $module@$LVP_PROMETHEUS_OPERATOR_VERSION has no example/prometheus-operator-crd" >&2
    exit 1
  fi
  rm -rf "$dest.tmp"
  mkdir -p "$dest.tmp"
  cp "$dir"/example/prometheus-operator-crd/*.yaml "$dest.tmp/"
  chmod -R u+w "$dest.tmp"
  touch "$dest.tmp/.complete"
  rm -rf "$dest"
  mv "$dest.tmp" "$dest"
fi
echo "$dest"
