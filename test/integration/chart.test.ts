// Proves the Helm chart (charts/libvirt-volume-provisioner) and manifests/: helm lint --strict,
// rendering with the defaults and with every optional feature, every rendered object accepted by
// the rig's real kube-apiserver in a server-side dry run (ServiceMonitor and PrometheusRule
// against the Prometheus Operator's own CRDs), a real `helm install`, the alerts with promtool,
// and that every PromQL expression parses and names only metrics the controller exports.
import assert from 'node:assert/strict';
import {
  cpSync,
  existsSync,
  mkdtempSync,
  readdirSync,
  readFileSync,
  rmSync,
  symlinkSync,
  writeFileSync,
} from 'node:fs';
import { isBuiltin } from 'node:module';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { execa } from 'execa';
import yaml from 'js-yaml';
import { SETTINGS } from '../../src/config/config.ts';
import { type KubeControlPlane, startKubeControlPlane } from '../rig/kube.ts';
import { goTool, projectRoot, toolsDir, versions } from '../rig/tools.ts';
import { makeWorkDir } from '../rig/workdir.ts';
import { alertRules, type Dashboard, prometheusQueries } from '../support/chart/monitoring.ts';
import {
  grafanaExprToPromQL,
  type MetricFamily,
  metricFamiliesInExposition,
  metricNamesInPromQL,
  seriesNames,
} from '../support/chart/promql.ts';
import { checkExpressions, checkRules, testRules } from '../support/chart/promtool.ts';
import {
  CHART_DIR,
  DEFAULT_NAMESPACE,
  helm,
  type KubeObject,
  MANIFESTS_FILE,
  PROMETHEUS_OPERATOR_APIS,
  parseObjects,
  renderChart,
  renderManifests,
} from '../support/chart/render.ts';
import { controllerDirs, controllerKubeconfig, installCrds, startController } from '../support/controller.ts';

const FIXTURES = join(projectRoot, 'test/integration/fixtures/chart');
/** Series that Prometheus itself adds to every scrape target. */
const SCRAPE_SERIES: readonly string[] = ['up'];
const ALL_FEATURES_VALUES = join(FIXTURES, 'all-features.values.yaml');

/** The alerts of the monitoring guide v0.10 (HighActiveJobs of the older guide became Degraded). */
const SEED_ALERTS = [
  'VolumeProvisionerDown',
  'VolumeProvisionerHighErrorRate',
  'VolumeProvisionerJobFailures',
  'VolumeProvisionerHighLatency',
  'VolumeProvisionerDegraded',
  'VolumeProvisionerDependencyDown',
  'VolumeProvisionerLowCacheHitRatio',
];
/** The dashboard panels of the monitoring guide, and the trace panels it asks for. */
const SEED_PANELS = [
  'Service Status',
  'Request Rate',
  'Error Rate',
  'Active Jobs',
  'Job Success Rate',
  'Response Latency (95th percentile)',
  'Cache Hit Ratio',
  'Dependency Health',
  'Download Throughput',
];
const TRACE_PANELS = ['Trace Explorer', 'Span Performance (95th percentile)', 'Service Map'];

interface Container {
  env: { name: string; value?: string; valueFrom?: { fieldRef?: { fieldPath: string } } }[];
  ports: { name: string; containerPort: number }[];
  livenessProbe: Record<string, { port?: string; path?: string }>;
  readinessProbe: Record<string, { port?: string; path?: string }>;
  securityContext: Record<string, unknown>;
  resources: { requests?: Record<string, string>; limits?: Record<string, string> };
  volumeMounts: { name: string; mountPath: string }[];
}
interface PodSpec {
  serviceAccountName: string;
  nodeSelector: Record<string, string>;
  tolerations: unknown[];
  terminationGracePeriodSeconds: number;
  containers: Container[];
  volumes: { name: string; hostPath?: { path: string } }[];
}

const byKind = (objects: readonly KubeObject[], kind: string): KubeObject[] =>
  objects.filter((object) => object.kind === kind);
function one(objects: readonly KubeObject[], kind: string): KubeObject {
  const found = byKind(objects, kind);
  assert.equal(found.length, 1, `expected one ${kind}, found ${found.length}`);
  return found[0] as KubeObject;
}
const podSpec = (objects: readonly KubeObject[]): PodSpec =>
  (one(objects, 'DaemonSet') as unknown as { spec: { template: { spec: PodSpec } } }).spec.template.spec;
const controllerContainer = (objects: readonly KubeObject[]): Container =>
  podSpec(objects).containers[0] as Container;
function dashboard(objects: readonly KubeObject[]): Dashboard {
  const configMap = one(objects, 'ConfigMap') as unknown as { data: Record<string, string> };
  const json = configMap.data['libvirt-volume-provisioner.json'];
  assert.ok(json, 'the dashboard ConfigMap holds libvirt-volume-provisioner.json');
  return JSON.parse(json) as Dashboard;
}

describe('Helm chart', { timeout: 600_000 }, () => {
  let cluster: KubeControlPlane;
  let defaults: KubeObject[];
  /** The defaults on a cluster that serves the Prometheus Operator's kinds. */
  let withOperator: KubeObject[];
  let allFeatures: KubeObject[];
  let allFeaturesText: string;

  const renderWithOperator = (set: Record<string, string> = {}) =>
    renderChart({ apiVersions: PROMETHEUS_OPERATOR_APIS, set });

  before(async () => {
    cluster = await startKubeControlPlane(makeWorkDir('chart'));
    defaults = parseObjects(await renderChart());
    withOperator = parseObjects(await renderWithOperator());
    allFeaturesText = await renderChart({
      apiVersions: PROMETHEUS_OPERATOR_APIS,
      valuesFiles: [ALL_FEATURES_VALUES],
    });
    allFeatures = parseObjects(allFeaturesText);
    // The Prometheus Operator's own CRDs, from the Go module proxy (cached by the script).
    const crdDir = (
      await execa('bash', [join(projectRoot, 'scripts/rig/install-prometheus-operator-crds.sh')])
    ).stdout.trim();
    for (const kind of ['servicemonitors', 'prometheusrules']) {
      const file = join(crdDir, `monitoring.coreos.com_${kind}.yaml`);
      await cluster.kubectl(['apply', '--server-side', '-f', file]);
      await cluster.kubectl(['wait', '--for=condition=Established', '--timeout=60s', '-f', file]);
    }
    await installCrds(cluster);
    for (const namespace of [DEFAULT_NAMESPACE, 'monitoring'])
      await cluster.kubectl(['create', 'namespace', namespace]);
  });

  after(async () => {
    await cluster?.stop();
  });

  describe('lint and render', () => {
    it('passes helm lint --strict with the defaults and with every optional feature', async () => {
      await helm(['lint', '--strict', '--kube-version', versions.kubernetes, CHART_DIR]);
      await helm([
        'lint',
        '--strict',
        '--kube-version',
        versions.kubernetes,
        CHART_DIR,
        '--values',
        ALL_FEATURES_VALUES,
      ]);
    });

    it('renders the controller objects by default, and the monitoring objects only with the Prometheus Operator', () => {
      assert.deepEqual(defaults.map((object) => object.kind).sort(), [
        'ClusterRole',
        'ClusterRoleBinding',
        'ConfigMap',
        'DaemonSet',
        'Service',
        'ServiceAccount',
      ]);
      for (const kind of ['ServiceMonitor', 'PrometheusRule', 'Secret']) {
        assert.equal(byKind(allFeatures, kind).length, 1, `all features render a ${kind}`);
      }
    });

    it('leaves the ServiceMonitor and PrometheusRule out when the values say so', async () => {
      const objects = parseObjects(
        await renderWithOperator({ 'serviceMonitor.enabled': 'false', 'prometheusRule.enabled': 'false' }),
      );
      assert.deepEqual(byKind(objects, 'ServiceMonitor'), []);
      assert.deepEqual(byKind(objects, 'PrometheusRule'), []);
    });

    it('rejects invalid values with messages that name the value', async () => {
      await assert.rejects(
        renderChart({ set: { 'controller.maxConcurrentJobs': 'two' } }),
        /maxConcurrentJobs.*want integer/s,
      );
      await assert.rejects(
        renderChart({ set: { 'controler.workers': '2' } }),
        /additional properties 'controler' not allowed/,
      );
      await assert.rejects(
        renderChart({ set: { 'server.tls.enabled': 'true' } }),
        /server.tls.enabled needs server.tls.secretName/,
      );
      await assert.rejects(
        renderChart({ set: { 'server.metricsAuth.mode': 'token' } }),
        /server.metricsAuth.mode=token needs server.metricsAuth.tokenSecret.name/,
      );
    });
  });

  describe('the real API server accepts every rendered object (server-side dry run)', () => {
    const dryRun = async (name: string, text: string) => {
      const dir = mkdtempSync(join(cluster.workDir, `dry-run-${name}-`));
      const file = join(dir, 'objects.yaml');
      writeFileSync(file, text);
      const { stdout } = await cluster.kubectl([
        'apply',
        '--dry-run=server',
        '--validate=strict',
        '-f',
        file,
      ]);
      return stdout;
    };

    it('with the defaults (manifests/, including its Namespace)', async () => {
      const stdout = await dryRun('defaults', readFileSync(MANIFESTS_FILE, 'utf8'));
      for (const object of parseObjects(readFileSync(MANIFESTS_FILE, 'utf8'))) {
        assert.match(
          stdout,
          new RegExp(`${object.metadata.name} (created|configured|unchanged) \\(server dry run\\)`),
        );
      }
    });

    it('with every optional feature, ServiceMonitor and PrometheusRule against the operator CRDs', async () => {
      const stdout = await dryRun('all-features', allFeaturesText);
      assert.match(
        stdout,
        /servicemonitor.monitoring.coreos.com\/libvirt-volume-provisioner created \(server dry run\)/,
      );
      assert.match(
        stdout,
        /prometheusrule.monitoring.coreos.com\/libvirt-volume-provisioner created \(server dry run\)/,
      );
      assert.equal(stdout.trim().split('\n').length, allFeatures.length, stdout);
    });

    it('with the shared-token variant of metrics authentication', async () => {
      const text = await renderChart({
        apiVersions: PROMETHEUS_OPERATOR_APIS,
        set: {
          'server.metricsAuth.mode': 'token',
          'server.metricsAuth.tokenSecret.name': 'provisioner-api-tokens',
        },
      });
      const stdout = await dryRun('token', text);
      assert.equal(stdout.trim().split('\n').length, parseObjects(text).length, stdout);
    });

    it('rejects a ServiceMonitor the operator schema does not allow, so the dry run can fail', async () => {
      const broken = allFeaturesText.replace('scheme: https', 'scheme: gopher');
      await assert.rejects(dryRun('broken', broken), /scheme/);
    });

    it('installs with helm against the cluster, which finds the operator CRDs itself, and prints NOTES', async () => {
      const { stdout } = await execa(
        goTool('helm'),
        [
          'install',
          'lvp',
          CHART_DIR,
          '--namespace',
          'lvp-helm',
          '--create-namespace',
          '--kubeconfig',
          cluster.kubeconfigPath,
          '--values',
          ALL_FEATURES_VALUES,
          '--set',
          'dashboard.namespace=',
        ],
        { cwd: CHART_DIR },
      );
      assert.match(stdout, /kubectl -n lvp-helm rollout status daemonset\/lvp-libvirt-volume-provisioner/);
      assert.match(stdout, /ServiceMonitor lvp-libvirt-volume-provisioner/);
      const { stdout: listed } = await cluster.kubectl([
        '-n',
        'lvp-helm',
        'get',
        'servicemonitor,prometheusrule,daemonset',
        '-o',
        'name',
      ]);
      assert.deepEqual(listed.trim().split('\n').sort(), [
        'daemonset.apps/lvp-libvirt-volume-provisioner',
        'prometheusrule.monitoring.coreos.com/lvp-libvirt-volume-provisioner',
        'servicemonitor.monitoring.coreos.com/lvp-libvirt-volume-provisioner',
      ]);
    });
  });

  describe('CRDs and manifests/', () => {
    it('ships CRDs identical to the top-level crds/', () => {
      const top = join(projectRoot, 'crds');
      const chart = join(CHART_DIR, 'crds');
      assert.deepEqual(readdirSync(chart).sort(), readdirSync(top).sort());
      for (const file of readdirSync(top)) {
        assert.equal(
          readFileSync(join(chart, file), 'utf8'),
          readFileSync(join(top, file), 'utf8'),
          `${file} differs`,
        );
      }
    });

    it('keeps manifests/ equal to the chart rendered with its defaults', async () => {
      assert.equal(
        readFileSync(MANIFESTS_FILE, 'utf8'),
        await renderManifests(),
        'manifests/ drifted from the chart: run `node test/support/chart/render.ts --write-manifests`',
      );
    });
  });

  describe('DaemonSet', () => {
    it('runs on hypervisor nodes, with NODE_NAME from the downward API', () => {
      const spec = podSpec(defaults);
      assert.equal(spec.nodeSelector['lvp.dev/hypervisor'], 'true');
      assert.ok(spec.tolerations.length > 0);
      const nodeName = controllerContainer(defaults).env.find((env) => env.name === 'NODE_NAME');
      assert.deepEqual(nodeName?.valueFrom, { fieldRef: { fieldPath: 'spec.nodeName' } });
    });

    it('passes every controller setting, and only variables the controller reads', async () => {
      const tokenMode = parseObjects(
        await renderChart({
          set: {
            'server.metricsAuth.mode': 'token',
            'server.metricsAuth.tokenSecret.name': 'provisioner-api-tokens',
          },
        }),
      );
      // DM_DISABLE_UDEV is read by libdevmapper (lvm) in the container, not by the controller.
      const known = new Set([...SETTINGS.map((setting) => setting.env), 'DM_DISABLE_UDEV']);
      const passed = new Set<string>();
      const hostLvm = parseObjects(await renderChart({ set: { 'lvm.hostNamespaces': 'true' } }));
      for (const objects of [defaults, allFeatures, tokenMode, hostLvm]) {
        const names = controllerContainer(objects).env.map((env) => env.name);
        assert.deepEqual(
          names.filter((name) => !known.has(name)),
          [],
          'the chart passes variables the controller does not read',
        );
        for (const name of names) passed.add(name);
      }
      const missing = SETTINGS.map((setting) => setting.env).filter((env) => !passed.has(env));
      assert.deepEqual(missing, [], 'settings of src/config/config.ts the chart cannot set');
    });

    it('runs lvm in the container by default, and in the host namespaces (hostPID, nsenter) only when asked', async () => {
      const env = (objects: readonly KubeObject[]) =>
        Object.fromEntries(
          controllerContainer(objects).env.map((variable) => [variable.name, variable.value]),
        );
      assert.equal((podSpec(defaults) as { hostPID?: boolean }).hostPID, undefined);
      assert.equal(env(defaults).DM_DISABLE_UDEV, '1');
      assert.equal(env(defaults).LVP_LVM_COMMAND_PREFIX, undefined);
      const hostLvm = parseObjects(await renderChart({ set: { 'lvm.hostNamespaces': 'true' } }));
      assert.equal((podSpec(hostLvm) as { hostPID?: boolean }).hostPID, true);
      assert.equal(
        env(hostLvm).LVP_LVM_COMMAND_PREFIX,
        'nsenter --target 1 --mount --uts --ipc --net --pid --',
      );
      assert.equal(env(hostLvm).DM_DISABLE_UDEV, undefined);
    });

    it('mounts only the host paths LVM, qemu-img and libvirt need', () => {
      const hostPaths = (objects: readonly KubeObject[]) =>
        podSpec(objects)
          .volumes.flatMap((volume) => (volume.hostPath ? [volume.hostPath.path] : []))
          .sort();
      const always = [
        '/dev',
        '/run/lock/lvm',
        '/run/lvm',
        '/var/lib/libvirt-volume-provisioner/cache',
        '/var/lib/libvirt-volume-provisioner/state',
        '/var/lib/libvirt/images',
      ];
      assert.deepEqual(hostPaths(defaults), always.sort());
      assert.deepEqual(hostPaths(allFeatures), [...always, '/run/libvirt'].sort());
      const template = readFileSync(join(CHART_DIR, 'templates/daemonset.yaml'), 'utf8');
      const explained = new Set<string>();
      for (const match of template.matchAll(/^( *)- name: (\S+)\n\1 {2}mountPath:/gm)) {
        const name = match[2] as string;
        if (explained.has(name)) continue;
        explained.add(name);
        const before = template.slice(0, match.index).trimEnd().split('\n').at(-1) ?? '';
        assert.match(before, /^\s*(#|\{\{-)/, `the mount ${name} has a comment saying why`);
      }
    });

    it('has probes on the server port, resources, a grace period beyond the shutdown timeout, and a rolling update', () => {
      const container = controllerContainer(defaults);
      assert.deepEqual(container.ports, [{ name: 'http', containerPort: 8080, protocol: 'TCP' }]);
      assert.deepEqual(container.livenessProbe.httpGet, { path: '/livez', port: 'http', scheme: 'HTTP' });
      assert.deepEqual(container.readinessProbe.httpGet, { path: '/readyz', port: 'http', scheme: 'HTTP' });
      assert.ok(container.resources.requests?.memory && container.resources.limits?.memory);
      const shutdown = Number(
        container.env.find((env) => env.name === 'LVP_SHUTDOWN_TIMEOUT_SECONDS')?.value,
      );
      assert.ok(podSpec(defaults).terminationGracePeriodSeconds > shutdown);
      const strategy = (
        one(defaults, 'DaemonSet') as unknown as { spec: { updateStrategy: { type: string } } }
      ).spec.updateStrategy;
      assert.equal(strategy.type, 'RollingUpdate');
      const tlsContainer = controllerContainer(allFeatures);
      assert.equal(tlsContainer.ports[0]?.name, 'https');
      assert.deepEqual(
        tlsContainer.livenessProbe.tcpSocket,
        { port: 'https' },
        'mTLS: the kubelet has no client cert',
      );
    });
  });

  describe('RBAC', () => {
    const rules = (objects: readonly KubeObject[]) =>
      (
        one(objects, 'ClusterRole') as unknown as {
          rules: { apiGroups: string[]; resources: string[]; verbs: string[] }[];
        }
      ).rules;
    const base = [
      {
        apiGroups: ['lvp.dev'],
        resources: ['volumeprovisions', 'cachedimages'],
        verbs: ['get', 'list', 'watch', 'patch'],
      },
      {
        apiGroups: ['lvp.dev'],
        resources: ['volumeprovisions/status', 'cachedimages/status'],
        verbs: ['patch'],
      },
      {
        apiGroups: ['lvp.dev'],
        resources: ['volumeprovisions/finalizers', 'cachedimages/finalizers'],
        verbs: ['update'],
      },
      { apiGroups: [''], resources: ['secrets'], verbs: ['get'] },
      { apiGroups: [''], resources: ['events'], verbs: ['create', 'patch'] },
    ];

    it('grants the controller exactly its objects, status, finalizers, Events and get on Secrets', () => {
      assert.deepEqual(rules(defaults), base);
      const binding = one(defaults, 'ClusterRoleBinding') as unknown as { subjects: unknown[] };
      assert.deepEqual(binding.subjects, [
        { kind: 'ServiceAccount', name: 'libvirt-volume-provisioner', namespace: DEFAULT_NAMESPACE },
      ]);
      assert.equal(podSpec(defaults).serviceAccountName, 'libvirt-volume-provisioner');
    });

    it('adds TokenReview and SubjectAccessReview only with secure metrics', () => {
      const controllerRole = byKind(allFeatures, 'ClusterRole').find(
        (object) => object.metadata.name === 'libvirt-volume-provisioner',
      ) as KubeObject;
      assert.deepEqual(rules([controllerRole]), [
        ...base,
        { apiGroups: ['authentication.k8s.io'], resources: ['tokenreviews'], verbs: ['create'] },
        { apiGroups: ['authorization.k8s.io'], resources: ['subjectaccessreviews'], verbs: ['create'] },
      ]);
    });
  });

  describe('ServiceMonitor', () => {
    it('scrapes the Service port over TLS with a bearer token, as in the monitoring guide', () => {
      const monitor = one(allFeatures, 'ServiceMonitor') as unknown as {
        spec: { selector: { matchLabels: Record<string, string> }; endpoints: Record<string, unknown>[] };
      };
      const service = one(allFeatures, 'Service') as unknown as {
        metadata: { labels: Record<string, string> };
        spec: { ports: { name: string }[] };
      };
      for (const [key, value] of Object.entries(monitor.spec.selector.matchLabels)) {
        assert.equal(service.metadata.labels[key], value, `the Service carries ${key}`);
      }
      const endpoint = monitor.spec.endpoints[0] as Record<string, unknown>;
      assert.equal(endpoint.port, service.spec.ports[0]?.name);
      assert.equal(endpoint.scheme, 'https');
      assert.equal(endpoint.path, '/metrics');
      assert.deepEqual(endpoint.tlsConfig, {
        serverName: 'libvirt-volume-provisioner.lvp-system.svc',
        ca: { secret: { name: 'lvp-serving-cert', key: 'ca.crt' } },
        cert: { secret: { name: 'prometheus-client-cert', key: 'tls.crt' } },
        keySecret: { name: 'prometheus-client-cert', key: 'tls.key' },
      });
      const tokenSecret = one(allFeatures, 'Secret');
      assert.deepEqual(endpoint.bearerTokenSecret, { name: tokenSecret.metadata.name, key: 'token' });
    });

    it('shares the static token Secret with the controller in token mode', async () => {
      const objects = parseObjects(
        await renderWithOperator({
          'server.metricsAuth.mode': 'token',
          'server.metricsAuth.tokenSecret.name': 'provisioner-api-tokens',
        }),
      );
      const monitor = one(objects, 'ServiceMonitor') as unknown as {
        spec: { endpoints: Record<string, unknown>[] };
      };
      assert.deepEqual(monitor.spec.endpoints[0]?.bearerTokenSecret, {
        name: 'provisioner-api-tokens',
        key: 'token',
      });
      const env = controllerContainer(objects).env;
      assert.equal(
        env.find((variable) => variable.name === 'LVP_METRICS_TOKEN_FILE')?.value,
        '/etc/libvirt-volume-provisioner/metrics-token/token',
      );
      assert.deepEqual(byKind(objects, 'Secret'), [], 'no ServiceAccount token without kubernetes mode');
    });
  });

  describe('PrometheusRule', () => {
    let dir: string;
    before(() => {
      dir = mkdtempSync(join(cluster.workDir, 'rules-'));
    });
    after(() => rmSync(dir, { recursive: true, force: true }));

    /** Writes the rendered rules where the promtool test file expects them; returns its path. */
    const writeRules = (objects: readonly KubeObject[]) => {
      const spec = (one(objects, 'PrometheusRule') as unknown as { spec: unknown }).spec;
      writeFileSync(join(dir, 'prometheus-rules.yaml'), yaml.dump(spec));
      cpSync(join(FIXTURES, 'alerts.promtool.yaml'), join(dir, 'alerts.promtool.yaml'));
      return join(dir, 'prometheus-rules.yaml');
    };

    it('has every alert of the guide, with a severity and a runbook in docs/runbooks', () => {
      const rules = alertRules(allFeatures);
      assert.deepEqual(rules.map((rule) => rule.alert).sort(), [...SEED_ALERTS].sort());
      for (const rule of rules) {
        assert.match(rule.labels?.severity ?? '', /^(critical|warning|info)$/, `${rule.alert} severity`);
        assert.ok(
          rule.annotations?.summary && rule.annotations.description,
          `${rule.alert} summary and description`,
        );
        assert.ok(
          rule.annotations?.runbook_url?.endsWith(`/docs/runbooks/${rule.alert}.md`),
          `${rule.alert} runbook_url`,
        );
        const runbook = join(projectRoot, 'docs/runbooks', `${rule.alert}.md`);
        assert.ok(existsSync(runbook), `${runbook} exists`);
        const headings = [...readFileSync(runbook, 'utf8').matchAll(/^## (.+)$/gm)].map((match) => match[1]);
        assert.deepEqual(headings, ['Meaning', 'Impact', 'Diagnosis', 'Mitigation'], `${runbook} sections`);
      }
    });

    it('passes promtool check rules', async () => {
      const result = await checkRules(writeRules(withOperator));
      assert.ok(result.ok, result.output);
      assert.match(result.output, /SUCCESS: 7 rules found/);
    });

    it('fires each alert on a series that should fire it and not on one that should not (promtool test rules)', async () => {
      writeRules(withOperator);
      const result = await testRules('alerts.promtool.yaml', dir);
      assert.ok(result.ok, result.output);
    });

    it('fails the promtool cases when an alert fires too widely, so they can fail', async () => {
      writeRules(parseObjects(await renderWithOperator({ 'prometheusRule.cacheHitRatioMin': '1' })));
      const result = await testRules('alerts.promtool.yaml', dir);
      assert.equal(result.ok, false, result.output);
      assert.match(result.output, /VolumeProvisionerLowCacheHitRatio/);
    });
  });

  describe('Grafana dashboard', () => {
    it('is a ConfigMap for the Grafana sidecar with every panel of the guide and trace panels', () => {
      const configMap = one(defaults, 'ConfigMap');
      assert.equal(configMap.metadata.labels?.grafana_dashboard, '1');
      const board = dashboard(defaults);
      const titles = board.panels.map((panel) => panel.title);
      for (const title of [...SEED_PANELS, ...TRACE_PANELS])
        assert.ok(titles.includes(title), `panel ${title}`);
      for (const title of TRACE_PANELS) {
        const panel = board.panels.find((candidate) => candidate.title === title);
        assert.equal(panel?.datasource?.type, 'tempo', `${title} reads traces`);
      }
    });

    it('has datasource and node variables, and every Prometheus query follows them', () => {
      const board = dashboard(defaults);
      const variables = new Map(board.templating.list.map((variable) => [variable.name, variable]));
      assert.equal(variables.get('datasource')?.type, 'datasource');
      assert.equal(variables.get('datasource')?.query, 'prometheus');
      assert.equal(variables.get('node')?.type, 'query');
      for (const panel of board.panels) {
        for (const target of panel.targets ?? []) {
          if (target.datasource.type !== 'prometheus') continue;
          assert.equal(
            target.datasource.uid,
            `\${datasource}`,
            `${panel.title} uses the datasource variable`,
          );
          assert.match(target.expr ?? '', /node=~"\$node"/, `${panel.title} filters by node`);
        }
      }
    });
  });

  describe('PromQL of the alerts and the dashboard', () => {
    let expressions: string[];
    before(() => {
      expressions = [
        ...alertRules(allFeatures).map((rule) => rule.expr),
        ...prometheusQueries(dashboard(defaults)).map(({ expr }) => grafanaExprToPromQL(expr)),
      ];
    });

    it('parses with Prometheus own parser (promtool)', async () => {
      assert.ok(expressions.length > 30, `${expressions.length} expressions`);
      const result = await checkExpressions(expressions);
      assert.ok(result.ok, result.output);
    });

    it('names only metrics the controller exports', async (t) => {
      const exported = await exportedMetrics(cluster);
      t.diagnostic(`metric names checked against: ${exported.source}`);
      const available = new Set([...seriesNames(exported.families), ...SCRAPE_SERIES]);
      const used = new Set(expressions.flatMap(metricNamesInPromQL));
      assert.ok(used.has('libvirt_volume_provisioner_request_duration_seconds_bucket'));
      const unknown = [...used].filter((name) => !available.has(name));
      assert.deepEqual(unknown, [], `metrics not exported (source: ${exported.source})`);
    });
  });
});

/** The metric families the controller really exports: a live /metrics of it, run with the chart's RBAC. */
async function exportedMetrics(
  cluster: KubeControlPlane,
): Promise<{ source: string; families: MetricFamily[] }> {
  const workDir = makeWorkDir('chart-metrics');
  const controller = await startController({
    kubeconfig: await controllerKubeconfig(cluster),
    nodeName: 'chart-node',
    dirs: controllerDirs(workDir),
    logFile: join(workDir, 'controller.log'),
  });
  try {
    const url = `http://127.0.0.1:${controller.serverPort}/metrics`;
    const response = await fetch(url);
    assert.equal(response.status, 200, `${url} answered ${response.status}`);
    return { source: `a live scrape of ${url}`, families: metricFamiliesInExposition(await response.text()) };
  } finally {
    await controller.process.stop();
  }
}

describe('Dockerfile', { timeout: 300_000 }, () => {
  const dockerfile = readFileSync(join(projectRoot, 'Dockerfile'), 'utf8');

  it('builds dist/ with the build stage commands, from only what .dockerignore lets in, and the result runs without node_modules', async () => {
    // No Docker engine here: run the build stage's commands on a copy of the build context,
    // with the project's node_modules standing in for the installed dependencies.
    assert.match(dockerfile, /RUN npx tsc -p tsconfig\.build\.json \\\n && node scripts\/build\.ts\n/);
    assert.doesNotMatch(
      dockerfile,
      /node_modules \.\/node_modules/,
      'the runtime stage needs no node_modules',
    );
    const letIn = readFileSync(join(projectRoot, '.dockerignore'), 'utf8')
      .split('\n')
      .filter((line) => line.startsWith('!'))
      .map((line) => line.slice(1).replace(/\/$/, ''));
    assert.ok(letIn.includes('src') && letIn.includes('scripts/build.ts'), letIn.join(', '));
    const context = makeWorkDir('docker-build');
    for (const path of letIn) {
      assert.match(
        dockerfile,
        new RegExp(`COPY .*${path.replace('.', '\\.')}\\b`),
        `the Dockerfile copies ${path}`,
      );
      cpSync(join(projectRoot, path), join(context, path), { recursive: true });
    }
    // The install step itself, as a dry run (it resolves against the lockfile, and downloads
    // nothing): `npm ci` refused this lockfile, which only a real image build would have shown.
    const install = /^RUN (npm (?:ci|install) .*)$/m.exec(dockerfile)?.[1];
    assert.ok(install, 'the build stage installs the dependencies with npm');
    const [, ...installArgs] = install.split(' ');
    const dryRun = await execa('npm', [...installArgs, '--dry-run'], {
      cwd: context,
      reject: false,
      all: true,
    });
    assert.equal(dryRun.exitCode, 0, `${install} --dry-run failed:\n${dryRun.all}`);
    symlinkSync(join(projectRoot, 'node_modules'), join(context, 'node_modules'));
    const node = join(projectRoot, 'node_modules/.bin/node');
    const tsc = join(projectRoot, 'node_modules/typescript/bin/tsc');
    for (const args of [[tsc, '-p', 'tsconfig.build.json'], ['scripts/build.ts']]) {
      const step = await execa(node, args, { cwd: context, reject: false, all: true });
      assert.equal(step.exitCode, 0, `${args.join(' ')} failed:\n${step.all}`);
    }

    // The runtime stage: only dist/ and package.json. Every import left in the bundle is one
    // of Node's modules or another file of the bundle.
    const runtime = makeWorkDir('docker-runtime');
    cpSync(join(context, 'dist'), join(runtime, 'dist'), { recursive: true });
    cpSync(join(context, 'package.json'), join(runtime, 'package.json'));
    const files = readdirSync(join(runtime, 'dist')).filter((name) => name.endsWith('.js'));
    assert.ok(files.includes('main.js'), 'dist/main.js is the ENTRYPOINT');
    for (const file of files) {
      const code = readFileSync(join(runtime, 'dist', file), 'utf8');
      for (const [, specifier = ''] of code.matchAll(/(?:\bfrom ?|\bimport ?\(?)["']([\w@./:-]+)["']/g)) {
        assert.ok(
          isBuiltin(specifier) || specifier.startsWith('./'),
          `dist/${file} imports ${specifier}, which is not in the bundle`,
        );
      }
    }
    // Without NODE_NAME it stops with the config error, after loading the whole bundle.
    const run = await execa(node, ['--enable-source-maps', 'dist/main.js'], {
      cwd: runtime,
      env: { PATH: process.env.PATH ?? '', HOME: runtime },
      extendEnv: false,
      reject: false,
      all: true,
    });
    assert.equal(run.exitCode, 2, run.all);
    assert.match(run.all ?? '', /nodeName is required/);
  });

  it('passes hadolint', async () => {
    const hadolint = join(toolsDir(), `hadolint-${versions.hadolint}/bin/hadolint`);
    assert.ok(
      existsSync(hadolint),
      `hadolint is not installed at ${hadolint}; run bash scripts/rig/install-tools.sh`,
    );
    const result = await execa(hadolint, ['--no-color', join(projectRoot, 'Dockerfile')], {
      reject: false,
      all: true,
    });
    assert.equal(result.exitCode, 0, result.all);
  });
});
