// Where the rig's real components live. Versions and the cache location have one source,
// scripts/rig/versions.sh, which scripts/rig/install-tools.sh uses to build them.
import { accessSync, constants, readFileSync } from 'node:fs';
import { homedir, tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

export const projectRoot = resolve(dirname(fileURLToPath(import.meta.url)), '../..');

const versionsFile = join(projectRoot, 'scripts/rig/versions.sh');

function versionOf(variable: string): string {
  const match = new RegExp(`^${variable}=(\\S+)$`, 'm').exec(readFileSync(versionsFile, 'utf8'));
  if (!match?.[1]) throw new Error(`${versionsFile} does not define ${variable}`);
  return match[1];
}

export const versions = {
  kubernetes: versionOf('LVP_KUBERNETES_VERSION'),
  etcd: versionOf('LVP_ETCD_VERSION'),
  minio: versionOf('LVP_MINIO_VERSION'),
  helm: versionOf('LVP_HELM_VERSION'),
  hadolint: versionOf('LVP_HADOLINT_VERSION'),
};

export function toolsDir(): string {
  return (
    process.env.LVP_TOOLS_DIR ??
    join(process.env.XDG_CACHE_HOME ?? join(homedir(), '.cache'), 'libvirt-volume-provisioner')
  );
}

/** Where every rig process records its PID while it runs; see scripts/test.sh. */
export function pidRegistryDir(): string {
  return process.env.LVP_RIG_PID_DIR ?? join(tmpdir(), 'lvp-rig-pids');
}

function executable(path: string): boolean {
  try {
    accessSync(path, constants.X_OK);
    return true;
  } catch {
    return false;
  }
}

const installHint = 'run `bash scripts/rig/install-tools.sh` (npm test does this)';

/** A Go-built component: KUBEBUILDER_ASSETS first, as controller-runtime users expect, then the cache. */
const goToolVersions = {
  'kube-apiserver': versions.kubernetes,
  kubectl: versions.kubernetes,
  etcd: versions.etcd,
  minio: versions.minio,
  helm: versions.helm,
} as const;

export function goTool(name: keyof typeof goToolVersions): string {
  const assets = process.env.KUBEBUILDER_ASSETS;
  const fromAssets = name === 'kube-apiserver' || name === 'etcd' || name === 'kubectl';
  if (assets && fromAssets && executable(join(assets, name))) return join(assets, name);
  const version = goToolVersions[name];
  const path = join(toolsDir(), 'bin', `${name}-${version}`, name);
  if (!executable(path)) throw new Error(`${name} ${version} is not installed at ${path}; ${installHint}`);
  return path;
}

/** A component from Debian's packages, looked up on PATH plus the sbin directories. */
export function systemTool(name: string): string {
  const dirs = [...(process.env.PATH ?? '').split(':'), '/usr/sbin', '/sbin', '/usr/bin'];
  for (const dir of dirs) {
    if (dir && executable(join(dir, name))) return join(dir, name);
  }
  throw new Error(`${name} is not installed; ${installHint}`);
}

/** User-mode Linux as scripts/rig/install-uml.sh unpacked it: the kernel, and its modules' root. */
export function umlKernel(): { binary: string; modulesDir: string } {
  const hint = 'run `bash scripts/rig/install-tools.sh debian`';
  let version: string;
  try {
    version = readFileSync(join(toolsDir(), 'bin', 'uml.version'), 'utf8').trim();
  } catch {
    throw new Error(`user-mode-linux is not installed in ${toolsDir()}; ${hint}`);
  }
  const folder = join(toolsDir(), 'bin', `uml-${version}`);
  const binary = join(folder, 'linux.uml');
  if (!executable(binary))
    throw new Error(`user-mode-linux ${version} is not installed at ${binary}; ${hint}`);
  return { binary, modulesDir: join(folder, 'root/usr/lib/uml/modules') };
}

/** The OTLP/gRPC receiver built by scripts/rig/install-otlp-receiver.sh (which records its version). */
export function otlpReceiverTool(): string {
  const hint = 'run `bash scripts/rig/install-otlp-receiver.sh`';
  let version: string;
  try {
    version = readFileSync(join(toolsDir(), 'bin', 'otlp-receiver.version'), 'utf8').trim();
  } catch {
    throw new Error(`otlp-receiver is not installed in ${toolsDir()}; ${hint}`);
  }
  const path = join(toolsDir(), 'bin', `otlp-receiver-${version}`, 'otlp-receiver');
  if (!executable(path)) throw new Error(`otlp-receiver ${version} is not installed at ${path}; ${hint}`);
  return path;
}
