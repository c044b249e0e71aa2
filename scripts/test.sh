#!/usr/bin/env bash
# The README's test command (`npm test`) runs this: it installs what is missing, checks
# types and lint, then runs every unit and integration test against the real rig.
# Any process of the rig still alive at the end is killed and fails the run.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
started=$SECONDS
step() { printf '\n== %s\n' "$*"; }

export LVP_RIG_DIR=${LVP_RIG_DIR:-${TMPDIR:-/tmp}/lvp-rig}
export LVP_RIG_PID_DIR="$LVP_RIG_DIR/pids"
# A second run on the same folder would delete the first one's logs and data, and sweep its
# processes: refuse it instead, naming the way out. The lock lives as long as this shell.
mkdir -p "$(dirname "$LVP_RIG_DIR")"
exec {rig_lock}>"$LVP_RIG_DIR.lock"
if ! flock -n "$rig_lock"; then
  echo "FAIL: another test run is using $LVP_RIG_DIR; wait for it, or give this run its own folder with LVP_RIG_DIR=..." >&2
  exit 1
fi

step "node dependencies (Node 24 comes from the npm package node@24)"
source scripts/ensure-node.sh

step "rig components (cached builds are reused)"
bash scripts/rig/install-tools.sh

step "typecheck and lint"
npm run -s typecheck
npm run -s lint

# A run that was killed may have left a test's file system (test/rig/xfs.ts) mounted inside
# the rig folder: unmount it, or rm would empty it and then fail on the mount point.
as_root=""
[ "$(id -u)" -eq 0 ] || as_root="sudo -n"
for mounted in $(findmnt -rn -o TARGET | grep -F "$LVP_RIG_DIR/" | sort -r || true); do
  $as_root umount -l "$mounted"
done
rm -rf "$LVP_RIG_DIR"
mkdir -p "$LVP_RIG_PID_DIR"

sweep() {
  local leaked=0 entry pid
  for entry in "$LVP_RIG_PID_DIR"/*; do
    [ -e "$entry" ] || continue
    pid=$(basename "$entry")
    if kill -0 "$pid" 2>/dev/null; then
      echo "rig process outlived its test: $(cat "$entry") (pid $pid); killing it" >&2
      kill -KILL -- "-$pid" 2>/dev/null || kill -KILL "$pid" 2>/dev/null || true
      leaked=1
    fi
    rm -f "$entry"
  done
  return $leaked
}

step "tests (rig logs: $LVP_RIG_DIR)"
status=0
# One runner invocation, so that its closing summary counts every test. Files run one at a
# time: each integration file starts its own real components on a 2-core machine.
node --test --test-concurrency=1 --test-reporter=spec \
  'test/unit/**/*.test.ts' 'test/integration/**/*.test.ts' || status=$?
sweep || { echo "FAIL: rig processes outlived the test run" >&2; status=1; }
echo "total time: $((SECONDS - started))s"
exit $status
