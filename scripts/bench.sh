#!/usr/bin/env bash
# `npm run bench`: installs what is missing, then runs bench/run.ts against the real rig.
# Pass options after --, e.g. npm run bench -- --size-mib 2048 --runs 5
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
source scripts/ensure-node.sh
bash scripts/rig/install-tools.sh
export LVP_RIG_DIR=${LVP_RIG_DIR:-${TMPDIR:-/tmp}/lvp-bench}
export LVP_RIG_PID_DIR="$LVP_RIG_DIR/pids"
rm -rf "$LVP_RIG_DIR"
npm run -s build
# A failed run keeps its logs for the post-mortem, but not its images, caches and MinIO data:
# a 2 GiB run that failed once left 38 GB behind until the next run's clean-up above.
if ! node bench/run.ts "$@"; then
  find "$LVP_RIG_DIR" -type f ! -name '*.log' -size +1M -delete
  echo "bench failed; its logs are under $LVP_RIG_DIR" >&2
  exit 1
fi
