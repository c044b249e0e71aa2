#!/usr/bin/env bash
# The README's run command (`npm run local`): installs what is missing, then starts a local
# cluster of real components on loopback and keeps it running until Ctrl-C.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
source scripts/ensure-node.sh
bash scripts/rig/install-tools.sh
export LVP_RIG_DIR=${LVP_RIG_DIR:-${TMPDIR:-/tmp}/lvp-local}
export LVP_RIG_PID_DIR="$LVP_RIG_DIR/pids"
exec node scripts/local.ts "$@"
