// Proves the CRDs in crds/ against the rig's real kube-apiserver: the examples are accepted,
// defaults apply, invalid specs and changes to immutable fields are rejected with messages a
// person can act on, field selectors work, printer columns show the status, and the status
// subresource keeps spec and status apart. Cases live in tables: a new case is one line.
import assert from 'node:assert/strict';
import { readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import {
  ApiException,
  ApiextensionsV1Api,
  CustomObjectsApi,
  type KubeConfig,
  type KubernetesObject,
  loadYaml,
  type V1CustomResourceDefinition,
  Watch,
} from '@kubernetes/client-node';
import {
  API_VERSION,
  CACHED_IMAGE,
  GROUP,
  STAGES,
  VERSION,
  VOLUME_PROVISION,
} from '../../src/api/v1alpha1.ts';
import { type KubeControlPlane, startKubeControlPlane } from '../rig/kube.ts';
import { waitUntil } from '../rig/net.ts';
import { projectRoot } from '../rig/tools.ts';
import { makeWorkDir } from '../rig/workdir.ts';

type Json = string | number | boolean | null | Json[] | JsonObject;
interface JsonObject {
  [key: string]: Json;
}

/** RFC 7386 merge patch: `null` removes a key, objects merge, anything else replaces. */
function mergePatch(target: JsonObject, patch: JsonObject): JsonObject {
  const result: JsonObject = structuredClone(target);
  for (const [key, value] of Object.entries(patch)) {
    const current = result[key];
    if (value === null) delete result[key];
    else if (isObject(value) && isObject(current)) result[key] = mergePatch(current, value);
    else result[key] = value;
  }
  return result;
}

function isObject(value: Json | undefined): value is JsonObject {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

/** [what is wrong, merge patch onto a valid spec, a substring of the API server's message] */
type RejectionCase = readonly [why: string, specPatch: JsonObject, message: string];

interface KindUnderTest {
  kind: string;
  plural: string;
  shortName: string;
  validSpec: JsonObject;
  /** A status that fills every printer column... */
  status: JsonObject;
  /** ...so that `kubectl get` prints these columns, and these cells after NAME and before AGE. */
  columns: readonly string[];
  cells: readonly string[];
  invalidSpecs: readonly RejectionCase[];
  /** Changes to an object that exists, applied as merge patches onto its spec. */
  immutableChanges: readonly RejectionCase[];
  /** Statuses the controller must never be able to write: [what is wrong, status, message]. */
  invalidStatuses: readonly StatusRejectionCase[];
}

type StatusRejectionCase = readonly [why: string, status: JsonObject, message: string];

const now = new Date().toISOString().replace(/\.\d+Z$/, 'Z');
const readyCondition = (status: 'True' | 'False', reason: string): JsonObject => ({
  type: 'Ready',
  status,
  reason,
  message: `test condition ${reason}`,
  lastTransitionTime: now,
});
const sha256 = 'a'.repeat(64);
const tooLong = (length: number) => 'x'.repeat(length);

/** spec.source has the same schema in both CRDs, so both kinds run these cases. */
// biome-ignore format: one case per line
const invalidSources: readonly RejectionCase[] = [
  ['an ftp:// url', { source: { url: 'ftp://images.example.com/noble.qcow2' } }, 'spec.source.url in body should match'],
  ['an s3:// url without a key', { source: { url: 's3://vm-images' } }, 'spec.source.url in body should match'],
  ['an https:// url without a path', { source: { url: 'https://images.example.com' } }, 'spec.source.url in body should match'],
  ['an overlong url', { source: { url: `https://images.example.com/${tooLong(2048)}` } }, 'spec.source.url: Too long'],
  ['a missing format', { source: { format: null } }, 'spec.source.format: Required value'],
  ['an unknown format', { source: { format: 'vmdk' } }, 'spec.source.format: Unsupported value: "vmdk"'],
  ['an md5 checksum', { source: { checksum: `md5:${'a'.repeat(32)}` } }, 'spec.source.checksum in body should match'],
  ['a short sha256 checksum', { source: { checksum: 'sha256:abc' } }, 'spec.source.checksum in body should match'],
  ['an upper-case checksum', { source: { checksum: `sha256:${'A'.repeat(64)}` } }, 'spec.source.checksum in body should match'],
  ['a secretRef without a name', { source: { secretRef: {} } }, 'spec.source.secretRef.name: Required value'],
  ['a bad secretRef name', { source: { secretRef: { name: 'Minio_Images' } } }, 'spec.source.secretRef.name in body should match'],
];

// biome-ignore format: one case per line
const invalidNodeNames: readonly RejectionCase[] = [
  ['a missing nodeName', { nodeName: null }, 'spec.nodeName: Required value'],
  ['a nodeName that is no DNS name', { nodeName: 'Node_A' }, 'spec.nodeName in body should match'],
  ['an overlong nodeName', { nodeName: tooLong(254) }, 'spec.nodeName: Too long'],
];

/** metav1.Condition rules, the same in both CRDs' status. */
// biome-ignore format: one case per line
const invalidConditions: readonly StatusRejectionCase[] = [
  [
    'a condition reason that is not CamelCase',
    { conditions: [{ ...readyCondition('False', 'X'), reason: 'download failed' }] },
    'status.conditions[0].reason: Invalid value: "download failed": conditions[0].reason in body should match',
  ],
  [
    'a condition status outside True/False/Unknown',
    { conditions: [{ ...readyCondition('False', 'X'), status: 'Maybe' }] },
    'status.conditions[0].status: Unsupported value: "Maybe"',
  ],
  [
    'two conditions of the same type',
    { conditions: [readyCondition('False', 'A'), readyCondition('True', 'B')] },
    'status.conditions[1]: Duplicate value',
  ],
];

// biome-ignore format: one case per line
const volumeProvision: KindUnderTest = {
  kind: VOLUME_PROVISION.kind,
  plural: VOLUME_PROVISION.plural,
  shortName: 'vp',
  validSpec: {
    nodeName: 'node-a',
    source: { url: 's3://vm-images/ubuntu/noble.qcow2', format: 'qcow2' },
    target: { volumeName: 'vm-root', size: '10Gi' },
    correlationId: 'ticket-4711',
  },
  status: {
    stage: 'Downloading',
    progress: { stagePercent: 84, overallPercent: 42, bytesProcessed: 840, bytesTotal: 1000, etaSeconds: 7 },
    conditions: [readyCondition('False', 'Downloading')],
  },
  columns: ['NAME', 'NODE', 'STAGE', 'PROGRESS', 'READY', 'AGE'],
  cells: ['node-a', 'Downloading', '42', 'False'],
  invalidSpecs: [
    ...invalidNodeNames,
    ...invalidSources,
    ['a missing target', { target: null }, 'spec.target: Required value'],
    ['an unknown target type', { target: { type: 'zfs' } }, 'spec.target.type: Unsupported value: "zfs"'],
    ['a missing volumeName', { target: { volumeName: null } }, 'spec.target.volumeName: Required value'],
    ['a volumeName starting with "-"', { target: { volumeName: '-root' } }, 'spec.target.volumeName in body should match'],
    ['a volumeName with a slash', { target: { volumeName: 'vm/root' } }, 'spec.target.volumeName in body should match'],
    ['the volumeName "."', { target: { volumeName: '.' } }, "volumeName must not be '.' or '..'"],
    ['the volumeName ".."', { target: { volumeName: '..' } }, "volumeName must not be '.' or '..'"],
    ['a volumeName starting with "snapshot"', { target: { volumeName: 'snapshot-1' } }, "must not start with 'snapshot'"],
    ['a volumeName starting with "pvmove"', { target: { volumeName: 'pvmove0' } }, "must not start with 'snapshot' or 'pvmove'"],
    ['a volumeName with "_tmeta"', { target: { volumeName: 'vm_tmeta' } }, 'volumeName must not contain _tmeta (reserved by LVM)'],
    ['a volumeName with "_rimage"', { target: { volumeName: 'a_rimage_0' } }, 'volumeName must not contain _rimage'],
    ['a volumeName with "_cdata"', { target: { volumeName: 'x_cdata' } }, 'volumeName must not contain _cdata'],
    ['an overlong volumeName', { target: { volumeName: tooLong(128) } }, 'spec.target.volumeName: Too long'],
    ['a missing size', { target: { size: null } }, 'spec.target.size: Required value'],
    ['a size that is no quantity', { target: { size: 'ten-gigs' } }, 'spec.target.size in body should match'],
    ['a size below 1Mi', { target: { size: '512Ki' } }, 'size must be at least 1Mi'],
    ['a size of 1000 bytes as a number', { target: { size: 1000 } }, 'size must be at least 1Mi'],
    ['a negative size', { target: { size: '-5Gi' } }, 'size must be at least 1Mi'],
    ['a milli-byte size', { target: { size: '100m' } }, 'size must be at least 1Mi'],
    ['a volumeGroup on a file target', { target: { type: 'file', volumeGroup: 'vg0' } }, 'volumeGroup is only allowed when type is lvm'],
    ['a volumeGroup starting with "-"', { target: { volumeGroup: '-vg' } }, 'spec.target.volumeGroup in body should match'],
    ['the volumeGroup ".."', { target: { volumeGroup: '..' } }, "volumeGroup must not be '.' or '..'"],
    ['a libvirtPool with a slash', { target: { libvirtPool: 'pools/default' } }, 'spec.target.libvirtPool in body should match'],
    ['an unknown reclaimPolicy', { reclaimPolicy: 'Recycle' }, 'spec.reclaimPolicy: Unsupported value: "Recycle"'],
    ['an overlong correlationId', { correlationId: tooLong(129) }, 'spec.correlationId: Too long'],
    ['a correlationId with a space', { correlationId: 'ticket 4711' }, 'spec.correlationId in body should match'],
  ],
  immutableChanges: [
    ['a new nodeName', { nodeName: 'node-b' }, 'nodeName is immutable'],
    ['a new source.url', { source: { url: 's3://vm-images/ubuntu/jammy.qcow2' } }, 'source is immutable'],
    ['a new source.format', { source: { format: 'raw' } }, 'source is immutable'],
    ['an added source.checksum', { source: { checksum: `sha256:${sha256}` } }, 'source is immutable'],
    ['a new target.size', { target: { size: '20Gi' } }, 'target is immutable'],
    ['a new target.volumeName', { target: { volumeName: 'vm-root-2' } }, 'target is immutable'],
    ['an added target.volumeGroup', { target: { volumeGroup: 'vg1' } }, 'target is immutable'],
    ['an added target.libvirtPool', { target: { libvirtPool: 'default' } }, 'target is immutable'],
    ['a new correlationId', { correlationId: 'ticket-1' }, 'correlationId is immutable'],
    ['a removed correlationId', { correlationId: null }, 'correlationId is immutable'],
  ],
  invalidStatuses: [
    ...invalidConditions,
    ['an unknown stage', { stage: 'Paused' }, 'status.stage: Unsupported value: "Paused"'],
    [
      'a percentage above 100',
      { progress: { stagePercent: 0, overallPercent: 101, bytesProcessed: 0, bytesTotal: 0 } },
      'status.progress.overallPercent: Invalid value: 101',
    ],
    ['a progress without bytes', { progress: { stagePercent: 1, overallPercent: 1 } }, 'status.progress.bytesTotal: Required value'],
    ['a fraction of a byte', { progress: { stagePercent: 14, overallPercent: 14, bytesProcessed: 37742025.1136, bytesTotal: 268435456 } }, 'status.progress.bytesProcessed: Invalid value'],
  ],
};

// biome-ignore format: one case per line
const cachedImage: KindUnderTest = {
  kind: CACHED_IMAGE.kind,
  plural: CACHED_IMAGE.plural,
  shortName: 'lvpci',
  validSpec: {
    nodeName: 'node-a',
    source: { url: 'https://images.example.com/debian-12.raw', format: 'raw', checksum: `sha256:${sha256}` },
  },
  status: {
    phase: 'Cached',
    sizeBytes: 2147483648,
    sha256,
    lastUsedTime: now,
    conditions: [readyCondition('True', 'Cached')],
  },
  columns: ['NAME', 'NODE', 'PHASE', 'SIZE', 'AGE'],
  cells: ['node-a', 'Cached', '2147483648'],
  invalidSpecs: [...invalidNodeNames, ...invalidSources, ['a missing source', { source: null }, 'spec.source: Required value']],
  immutableChanges: [
    ['a new nodeName', { nodeName: 'node-b' }, 'nodeName is immutable'],
    ['a new source.url', { source: { url: 'https://images.example.com/debian-13.raw' } }, 'source is immutable'],
    ['a removed source.checksum', { source: { checksum: null } }, 'source is immutable'],
  ],
  invalidStatuses: [
    ...invalidConditions,
    ['an unknown phase', { phase: 'Evicted' }, 'status.phase: Unsupported value: "Evicted"'],
    ['a negative size', { sizeBytes: -1 }, 'status.sizeBytes: Invalid value: -1'],
    ['a sha256 that is no hex digest', { sha256: 'abc' }, 'status.sha256: Invalid value: "abc": sha256 in body should match'],
  ],
};

interface StoredObject extends KubernetesObject {
  metadata: { name: string; resourceVersion: string; labels?: Record<string, string> };
  spec: JsonObject;
  status?: JsonObject;
}

const namespace = 'default';
const testLabel = 'lvp.dev/crds-test';
let objectCount = 0;
/** A fresh object name per test, so tests share the cluster without seeing each other's objects. */
const freshName = (prefix: string) => `${prefix}-${++objectCount}`;

/** The HTTP status and the Status message of a request the API server refused. */
async function rejection(request: Promise<unknown>): Promise<{ code: number; message: string }> {
  try {
    await request;
  } catch (error) {
    if (!(error instanceof ApiException)) throw error;
    const body: unknown = typeof error.body === 'string' ? JSON.parse(error.body) : error.body;
    const message =
      typeof body === 'object' && body !== null && 'message' in body ? String(body.message) : String(body);
    return { code: error.code, message };
  }
  assert.fail('the API server accepted the request');
}

async function assertInvalid(request: Promise<unknown>, expectedMessage: string): Promise<void> {
  const { code, message } = await rejection(request);
  assert.equal(code, 422, message);
  assert.ok(message.includes(expectedMessage), `expected "${expectedMessage}" in: ${message}`);
}

interface CreateOptions {
  labels?: Record<string, string>;
  status?: JsonObject;
}

/** Typed access to one custom resource in the test namespace. */
function customResource(config: KubeConfig, kind: KindUnderTest) {
  const api = config.makeApiClient(CustomObjectsApi);
  const where = { group: GROUP, version: VERSION, namespace, plural: kind.plural };
  const body = (name: string, spec: JsonObject, extra: CreateOptions = {}) => ({
    apiVersion: API_VERSION,
    kind: kind.kind,
    metadata: { name, labels: extra.labels ?? {} },
    spec,
    ...(extra.status === undefined ? {} : { status: extra.status }),
  });
  return {
    create: async (name: string, spec: JsonObject, extra: CreateOptions = {}): Promise<StoredObject> =>
      await api.createNamespacedCustomObject({ ...where, body: body(name, spec, extra) }),
    /** Dry run: validated and defaulted by the API server, never stored. */
    validate: (spec: JsonObject): Promise<StoredObject> =>
      api.createNamespacedCustomObject({ ...where, body: body(freshName('dry'), spec), dryRun: 'All' }),
    get: async (name: string): Promise<StoredObject> =>
      await api.getNamespacedCustomObject({ ...where, name }),
    replace: async (object: StoredObject): Promise<StoredObject> =>
      await api.replaceNamespacedCustomObject({ ...where, name: object.metadata.name, body: object }),
    replaceStatus: async (object: StoredObject): Promise<StoredObject> =>
      await api.replaceNamespacedCustomObjectStatus({ ...where, name: object.metadata.name, body: object }),
    list: async (labelSelector: string, fieldSelector?: string): Promise<StoredObject[]> => {
      const list: { items: StoredObject[] } = await api.listNamespacedCustomObject({
        ...where,
        labelSelector,
        ...(fieldSelector === undefined ? {} : { fieldSelector }),
      });
      return list.items;
    },
    watchPath: `/apis/${GROUP}/${VERSION}/namespaces/${namespace}/${kind.plural}`,
  };
}

function loadCrds(): V1CustomResourceDefinition[] {
  const dir = join(projectRoot, 'crds');
  // loadYaml (js-yaml plus the client's deserializer) maps `x-kubernetes-*` keys to the model's
  // property names; a plain js-yaml object would lose them when the client serializes it.
  return readdirSync(dir)
    .filter((file) => file.endsWith('.yaml'))
    .map((file) => loadYaml<V1CustomResourceDefinition>(readFileSync(join(dir, file), 'utf8')));
}

describe('CRDs on a real API server', { timeout: 300_000 }, () => {
  let cluster: KubeControlPlane;
  let config: KubeConfig;

  before(async () => {
    cluster = await startKubeControlPlane(makeWorkDir('crds'));
    config = cluster.adminConfig();
    const extensions = config.makeApiClient(ApiextensionsV1Api);
    const crds = loadCrds();
    assert.deepEqual(crds.map((crd) => crd.spec.names.kind).sort(), [
      CACHED_IMAGE.kind,
      VOLUME_PROVISION.kind,
    ]);
    for (const crd of crds) {
      const name = crd.metadata?.name ?? '';
      await extensions.createCustomResourceDefinition({ body: crd });
      await waitUntil(
        async () => {
          const current = await extensions.readCustomResourceDefinition({ name });
          return (
            current.status?.conditions?.some((c) => c.type === 'Established' && c.status === 'True') ?? false
          );
        },
        { what: `CRD ${name} Established`, timeoutMs: 30_000 },
      );
    }
    // Established comes a moment before the resources are served (the API server may answer
    // 404 or 429 while its watch cache initializes), so wait until a list succeeds.
    for (const kind of [volumeProvision, cachedImage]) {
      await waitUntil(async () => Array.isArray(await customResource(config, kind).list('')), {
        what: `${kind.plural} served`,
        timeoutMs: 30_000,
      });
    }
  });
  after(async () => {
    await cluster?.stop();
  });

  describe('crds/', () => {
    const schemaOf = (kind: string) => {
      const crd = loadCrds().find((candidate) => candidate.spec.names.kind === kind);
      const schema = crd?.spec.versions[0]?.schema?.openAPIV3Schema;
      assert.ok(schema?.properties, `crds/ holds no schema for ${kind}`);
      return schema.properties;
    };

    it('gives CachedImage the same source and conditions schema as VolumeProvision', () => {
      const provision = schemaOf(VOLUME_PROVISION.kind);
      const cached = schemaOf(CACHED_IMAGE.kind);
      assert.deepEqual(cached.spec?.properties?.source, provision.spec?.properties?.source);
      assert.deepEqual(cached.status?.properties?.conditions, provision.status?.properties?.conditions);
    });

    it('declares the stages of src/api/v1alpha1.ts', () => {
      assert.deepEqual(schemaOf(VOLUME_PROVISION.kind).status?.properties?.stage?._enum, [...STAGES]);
    });
  });

  describe('examples/', () => {
    const examples = readdirSync(join(projectRoot, 'examples')).filter((file) => file.endsWith('.yaml'));

    it('holds a Secret, a VolumeProvision of each target type and a CachedImage', () => {
      assert.deepEqual(examples.sort(), [
        'cachedimage.yaml',
        'source-secret.yaml',
        'volumeprovision-file.yaml',
        'volumeprovision-lvm.yaml',
      ]);
    });

    for (const file of examples) {
      it(`${file} passes kubectl apply --dry-run=server`, async () => {
        const { stdout } = await cluster.kubectl([
          'apply',
          '--dry-run=server',
          '-f',
          join(projectRoot, 'examples', file),
        ]);
        assert.match(stdout, /created \(server dry run\)/);
      });
    }
  });

  describe('VolumeProvision defaults and mutable fields', () => {
    it('defaults target.type to lvm and reclaimPolicy to Delete', async () => {
      const stored = await customResource(config, volumeProvision).validate(volumeProvision.validSpec);
      assert.deepEqual(stored.spec, {
        ...volumeProvision.validSpec,
        target: { type: 'lvm', volumeName: 'vm-root', size: '10Gi' },
        reclaimPolicy: 'Delete',
      });
    });

    it('keeps what the user chose', async () => {
      const spec = mergePatch(volumeProvision.validSpec, {
        target: { type: 'file' },
        reclaimPolicy: 'Retain',
      });
      const stored = await customResource(config, volumeProvision).validate(spec);
      assert.deepEqual(stored.spec, spec);
    });

    it('accepts a size given as a number of bytes', async () => {
      const spec = mergePatch(volumeProvision.validSpec, { target: { size: 1048576 } });
      const stored = await customResource(config, volumeProvision).validate(spec);
      assert.deepEqual(stored.spec.target, { type: 'lvm', volumeName: 'vm-root', size: 1048576 });
    });

    it('lets reclaimPolicy change after creation', async () => {
      const resource = customResource(config, volumeProvision);
      const created = await resource.create(freshName('vp-reclaim'), volumeProvision.validSpec);
      const replaced = await resource.replace({
        ...created,
        spec: mergePatch(created.spec, { reclaimPolicy: 'Retain' }),
      });
      assert.equal(replaced.spec.reclaimPolicy, 'Retain');
    });
  });

  for (const kind of [volumeProvision, cachedImage]) {
    describe(kind.kind, () => {
      const resource = () => customResource(config, kind);

      it('accepts the valid spec the cases below start from', async () => {
        await resource().validate(kind.validSpec);
      });

      for (const [why, patch, message] of kind.invalidSpecs) {
        it(`rejects ${why}`, async () => {
          await assertInvalid(resource().validate(mergePatch(kind.validSpec, patch)), message);
        });
      }

      for (const [why, patch, message] of kind.immutableChanges) {
        it(`rejects ${why} after creation`, async () => {
          const created = await resource().create(freshName(`${kind.shortName}-immutable`), kind.validSpec);
          await assertInvalid(
            resource().replace({ ...created, spec: mergePatch(created.spec, patch) }),
            message,
          );
        });
      }

      for (const [why, status, message] of kind.invalidStatuses) {
        it(`refuses a status with ${why}`, async () => {
          const created = await resource().create(freshName(`${kind.shortName}-bad-status`), kind.validSpec);
          await assertInvalid(resource().replaceStatus({ ...created, status }), message);
        });
      }

      it('lists only one node’s objects with fieldSelector=spec.nodeName', async () => {
        const label = { [testLabel]: freshName('list') };
        const onNodeA = [freshName('a'), freshName('a')];
        for (const name of onNodeA) await resource().create(name, kind.validSpec, { labels: label });
        await resource().create(freshName('b'), mergePatch(kind.validSpec, { nodeName: 'node-b' }), {
          labels: label,
        });

        const selector = `${testLabel}=${label[testLabel]}`;
        assert.equal((await resource().list(selector)).length, 3);
        const listed = await resource().list(selector, 'spec.nodeName=node-a');
        assert.deepEqual(listed.map((object) => object.metadata.name).sort(), onNodeA.sort());
      });

      it('watches only one node’s objects with fieldSelector=spec.nodeName', async () => {
        const label = { [testLabel]: freshName('watch') };
        const events: string[] = [];
        let ended: unknown;
        let watch: AbortController | undefined;
        // A watch on a resource this new can still get 429 while the watch cache initializes.
        await waitUntil(
          async () => {
            ended = undefined;
            watch = await new Watch(config).watch(
              resource().watchPath,
              { fieldSelector: 'spec.nodeName=node-a', labelSelector: `${testLabel}=${label[testLabel]}` },
              (phase: string, object: KubernetesObject) => events.push(`${phase} ${object.metadata?.name}`),
              (error: unknown) => {
                ended = error ?? 'closed';
              },
            );
            if (ended) throw new Error(`watch ended: ${String(ended)}`);
            return true;
          },
          { what: `a watch on ${kind.plural}`, timeoutMs: 30_000 },
        );
        try {
          // Events arrive in resourceVersion order: had node-b's object leaked into the watch,
          // its event would come before node-a's.
          const onNodeB = freshName('b');
          const onNodeA = freshName('a');
          await resource().create(onNodeB, mergePatch(kind.validSpec, { nodeName: 'node-b' }), {
            labels: label,
          });
          await resource().create(onNodeA, kind.validSpec, { labels: label });
          await waitUntil(
            async () => {
              if (ended) throw new Error(`watch ended: ${String(ended)}`);
              return events.length > 0;
            },
            { what: `watch events for ${onNodeA}`, timeoutMs: 15_000 },
          );
          assert.deepEqual(events, [`ADDED ${onNodeA}`]);
        } finally {
          watch?.abort();
        }
      });

      it(`shows ${kind.columns.join(', ')} in kubectl get ${kind.shortName}`, async () => {
        const name = freshName(`${kind.shortName}-columns`);
        const created = await resource().create(name, kind.validSpec);
        await resource().replaceStatus({ ...created, status: kind.status });

        const { stdout } = await cluster.kubectl(['get', kind.shortName, name, '--namespace', namespace]);
        const [header = '', row = ''] = stdout.trim().split('\n');
        assert.deepEqual(header.split(/\s+/), kind.columns);
        const cells = row.split(/\s+/);
        assert.deepEqual(cells.slice(0, kind.cells.length + 1), [name, ...kind.cells]);
      });

      it('waits for the Ready condition with kubectl wait', async () => {
        const name = freshName(`${kind.shortName}-ready`);
        const created = await resource().create(name, kind.validSpec);
        await resource().replaceStatus({
          ...created,
          status: { conditions: [readyCondition('True', 'Done')] },
        });
        const { stdout } = await cluster.kubectl([
          'wait',
          '--for=condition=Ready',
          '--timeout=10s',
          '--namespace',
          namespace,
          `${kind.plural}.${GROUP}/${name}`,
        ]);
        assert.match(stdout, /condition met/);
      });

      it('keeps status out of main-resource writes and spec out of status writes', async () => {
        const name = freshName(`${kind.shortName}-subresource`);
        const created = await resource().create(name, kind.validSpec, { status: kind.status });
        assert.equal(created.status, undefined, 'a status sent with create is dropped');

        const withStatus = await resource().replaceStatus({
          ...created,
          spec: mergePatch(created.spec, { nodeName: 'node-b' }),
          status: kind.status,
        });
        assert.deepEqual(withStatus.status, kind.status);
        assert.equal(withStatus.spec.nodeName, 'node-a', 'a status write cannot change the spec');

        const replaced = await resource().replace({ ...withStatus, status: { conditions: [] } });
        assert.deepEqual(replaced.status, kind.status, 'a main-resource write cannot change the status');
        assert.deepEqual((await resource().get(name)).status, kind.status);
      });
    });
  }
});
