// Renders the Helm chart with the rig's helm, and generates manifests/ from it. Run as a script
// to regenerate manifests/ after changing the chart:
//   node test/support/chart/render.ts --write-manifests
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { execa } from 'execa';
import yaml from 'js-yaml';
import { goTool, projectRoot, versions } from '../../rig/tools.ts';

export const CHART_DIR = join(projectRoot, 'charts/libvirt-volume-provisioner');
export const MANIFESTS_FILE = join(projectRoot, 'manifests/libvirt-volume-provisioner.yaml');
/** manifests/ is the chart installed as this release into this namespace. */
export const DEFAULT_RELEASE = 'libvirt-volume-provisioner';
export const DEFAULT_NAMESPACE = 'lvp-system';
/** Tells `helm template` that the cluster serves the Prometheus Operator's kinds. */
export const PROMETHEUS_OPERATOR_APIS = [
  'monitoring.coreos.com/v1/ServiceMonitor',
  'monitoring.coreos.com/v1/PrometheusRule',
] as const;

export interface KubeObject {
  apiVersion: string;
  kind: string;
  metadata: { name: string; namespace?: string; labels?: Record<string, string> };
  [field: string]: unknown;
}

export interface RenderOptions {
  /** Values files, applied in order before `set`. */
  valuesFiles?: readonly string[];
  /** `--set` style overrides, e.g. { 'server.tls.enabled': 'true' }. */
  set?: Record<string, string>;
  apiVersions?: readonly string[];
  release?: string;
  namespace?: string;
}

/** Runs helm with the chart directory as working directory; rejects with helm's stderr. */
export async function helm(args: readonly string[]): Promise<string> {
  const result = await execa(goTool('helm'), args, { cwd: CHART_DIR, reject: false });
  if (result.exitCode !== 0) {
    throw new Error(
      `helm ${args.join(' ')} failed (exit ${result.exitCode}):\n${result.stderr}${result.stdout}`,
    );
  }
  return result.stdout;
}

/** `helm template` of the chart; the Kubernetes version is the rig's, since helm cannot ask a cluster. */
export function renderChart(options: RenderOptions = {}): Promise<string> {
  const args = [
    'template',
    options.release ?? DEFAULT_RELEASE,
    CHART_DIR,
    '--namespace',
    options.namespace ?? DEFAULT_NAMESPACE,
    '--kube-version',
    versions.kubernetes,
  ];
  for (const apiVersion of options.apiVersions ?? []) args.push('--api-versions', apiVersion);
  for (const file of options.valuesFiles ?? []) args.push('--values', file);
  for (const [key, value] of Object.entries(options.set ?? {})) args.push('--set', `${key}=${value}`);
  return helm(args);
}

/** The objects of a multi-document YAML text, without empty documents. */
export function parseObjects(text: string): KubeObject[] {
  return yaml.loadAll(text).filter((doc): doc is KubeObject => typeof doc === 'object' && doc !== null);
}

/** manifests/libvirt-volume-provisioner.yaml: the namespace, then the chart with its defaults. */
export async function renderManifests(): Promise<string> {
  const namespace = [
    'apiVersion: v1',
    'kind: Namespace',
    'metadata:',
    `  name: ${DEFAULT_NAMESPACE}`,
    '  labels:',
    '    app.kubernetes.io/name: libvirt-volume-provisioner',
  ].join('\n');
  return [
    '# Generated from charts/libvirt-volume-provisioner with its default values; do not edit.',
    '# Regenerate: node test/support/chart/render.ts --write-manifests',
    '# Install: kubectl apply -f crds/ && kubectl apply -f manifests/',
    '---',
    namespace,
    (await renderChart()).trimEnd(),
    '',
  ].join('\n');
}

if (process.argv[1] === import.meta.filename && process.argv.includes('--write-manifests')) {
  writeFileSync(MANIFESTS_FILE, await renderManifests());
  process.stdout.write(`wrote ${MANIFESTS_FILE}\n`);
}
