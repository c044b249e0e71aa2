// The controller's only doors to the Kubernetes API, each a narrow interface so that the
// reconciler can be tested with small fakes and proven against a real API server.
import {
  CoreV1Api,
  CustomObjectsApi,
  type KubeConfig,
  PatchStrategy,
  setHeaderOptions,
} from '@kubernetes/client-node';
import { API_VERSION, GROUP, VERSION, VOLUME_PROVISION, type VolumeProvision } from '../api/v1alpha1.ts';
import type { ObjectList } from '../controller/informer.ts';
import { httpStatusOf } from './errors.ts';
import type { ObjectRef, StatusApi } from './status-writer.ts';

export interface VolumeProvisionApi extends StatusApi {
  list(fieldSelector: string | undefined): Promise<ObjectList<VolumeProvision>>;
  /** Replaces metadata.finalizers, conditional on the object's resourceVersion. */
  setFinalizers(object: VolumeProvision, finalizers: string[]): Promise<void>;
}

export interface SecretReader {
  /** The Secret's decoded data, or undefined when it does not exist. */
  read(namespace: string, name: string): Promise<Record<string, string> | undefined>;
}

export type EventType = 'Normal' | 'Warning';

export interface EventRecorder {
  record(object: VolumeProvision, type: EventType, reason: string, message: string): void;
}

const mergePatch = setHeaderOptions('Content-Type', PatchStrategy.MergePatch);
const resource = { group: GROUP, version: VERSION, plural: VOLUME_PROVISION.plural };

export function volumeProvisionApi(config: KubeConfig): VolumeProvisionApi {
  const api = config.makeApiClient(CustomObjectsApi);
  return {
    async list(fieldSelector) {
      const request = fieldSelector ? { ...resource, fieldSelector } : resource;
      return (await api.listClusterCustomObject(request)) as ObjectList<VolumeProvision>;
    },
    async setFinalizers(object, finalizers) {
      const { namespace = '', name = '', resourceVersion } = object.metadata ?? {};
      await api.patchNamespacedCustomObject(
        { ...resource, namespace, name, body: { metadata: { finalizers, resourceVersion } } },
        mergePatch,
      );
    },
    async patchStatus(ref: ObjectRef, body: object) {
      await api.patchNamespacedCustomObjectStatus(
        { ...resource, namespace: ref.namespace, name: ref.name, body },
        mergePatch,
      );
    },
  };
}

export function secretReader(config: KubeConfig): SecretReader {
  const core = config.makeApiClient(CoreV1Api);
  return {
    async read(namespace, name) {
      try {
        const secret = await core.readNamespacedSecret({ namespace, name });
        return Object.fromEntries(
          Object.entries(secret.data ?? {}).map(([key, value]) => [
            key,
            Buffer.from(value, 'base64').toString('utf8'),
          ]),
        );
      } catch (error) {
        if (httpStatusOf(error) === 404) return undefined;
        throw error;
      }
    },
  };
}

export interface EventRecorderOptions {
  component: string;
  host: string;
  onError(error: unknown): void;
  /** Identical events for one object within this window are sent once. */
  dedupeWindowMs?: number;
  now?: () => Date;
}

export function eventRecorder(config: KubeConfig, options: EventRecorderOptions): EventRecorder {
  const core = config.makeApiClient(CoreV1Api);
  const lastSent = new Map<string, number>();
  const window = options.dedupeWindowMs ?? 10 * 60_000;
  const now = options.now ?? (() => new Date());
  return {
    record(object, type, reason, message) {
      const { namespace = 'default', name = '', uid = '' } = object.metadata ?? {};
      const time = now();
      const dedupeKey = `${uid}\0${reason}\0${message}`;
      const previous = lastSent.get(dedupeKey);
      if (previous !== undefined && time.getTime() - previous < window) return;
      lastSent.set(dedupeKey, time.getTime());
      // Keep the map from growing with every object ever seen.
      if (lastSent.size > 10_000) lastSent.delete(lastSent.keys().next().value as string);
      core
        .createNamespacedEvent({
          namespace,
          body: {
            metadata: { generateName: `${name}.`, namespace },
            involvedObject: { apiVersion: API_VERSION, kind: VOLUME_PROVISION.kind, name, namespace, uid },
            type,
            reason,
            message: message.slice(0, 1024),
            source: { component: options.component, host: options.host },
            reportingComponent: options.component,
            reportingInstance: `${options.component}-${options.host}`,
            firstTimestamp: time,
            lastTimestamp: time,
            count: 1,
          },
        })
        .catch(options.onError);
    },
  };
}
