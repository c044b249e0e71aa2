# Sourced by the project's scripts: installs the npm dependencies when they are missing or
# stale, then puts node_modules/.bin (with Node 24 from the npm package node@24) first on PATH.
if [ ! -x node_modules/.bin/node ] || [ package-lock.json -nt node_modules/.package-lock.json ]; then
  # `npm install`, not `npm ci`: the registry here has no builds of @biomejs/biome's
  # non-Linux optional packages, so the lockfile cannot list them and `npm ci` refuses it
  # as out of sync. `npm install` still installs exactly the locked versions.
  npm install --no-fund --no-audit
fi
export PATH="$PWD/node_modules/.bin:$PATH"
if [ "$(node -p 'process.versions.node.split(".")[0]')" -lt 24 ]; then
  echo "Node 24 or later is required; node_modules/.bin/node is $(node --version)" >&2
  exit 1
fi
