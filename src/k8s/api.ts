// The controller's only doors to the Kubernetes API, each a narrow interface so that the
// reconciler can be tested with small fakes and proven against a real API server.
import {
  CoreV1Api,
  CustomObjectsApi,
  type KubeConfig,
  type KubernetesObject,
  PatchStrategy,
  setHeaderOptions,
} from '@kubernetes/client-node';
import { API_VERSION, GROUP, VERSION, VOLUME_PROVISION, type VolumeProvision } from '../api/v1alpha1.ts';
import type { ObjectList } from '../controller/informer.ts';
import { inKubernetesSpan } from '../telemetry/tracing.ts';
import { httpStatusOf } from './errors.ts';
import type { ObjectRef, StatusApi } from './status-writer.ts';

export interface CustomObjectApi<T extends KubernetesObject> extends StatusApi {
  list(fieldSelector: string | undefined): Promise<ObjectList<T>>;
  /** Replaces metadata.finalizers, conditional on the object's resourceVersion; returns the result. */
  setFinalizers(object: T, finalizers: string[]): Promise<T>;
}

export type VolumeProvisionApi = CustomObjectApi<VolumeProvision>;

export interface SecretReader {
  /** The Secret's decoded data, or undefined when it does not exist. */
  read(namespace: string, name: string): Promise<Record<string, string> | undefined>;
}

export type EventType = 'Normal' | 'Warning';

export interface EventRecorder<T extends KubernetesObject = VolumeProvision> {
  record(object: T, type: EventType, reason: string, message: string): void;
}

const mergePatch = setHeaderOptions('Content-Type', PatchStrategy.MergePatch);
/** List, finalizers and status of one lvp.dev kind, e.g. customObjectApi(config, 'cachedimages'). */
export function customObjectApi<T extends KubernetesObject>(
  config: KubeConfig,
  plural: string,
): CustomObjectApi<T> {
  const api = config.makeApiClient(CustomObjectsApi);
  const resource = { group: GROUP, version: VERSION, plural };
  return {
    list(fieldSelector) {
      const request = fieldSelector ? { ...resource, fieldSelector } : resource;
      return inKubernetesSpan(
        'LIST',
        resource.plural,
        undefined,
        async () => (await api.listClusterCustomObject(request)) as ObjectList<T>,
      );
    },
    setFinalizers(object, finalizers) {
      const { namespace = '', name = '', resourceVersion } = object.metadata ?? {};
      return inKubernetesSpan(
        'PATCH',
        resource.plural,
        namespace,
        async () =>
          (await api.patchNamespacedCustomObject(
            { ...resource, namespace, name, body: { metadata: { finalizers, resourceVersion } } },
            mergePatch,
          )) as T,
      );
    },
    async patchStatus(ref: ObjectRef, body: object) {
      await inKubernetesSpan('PATCH', `${resource.plural}/status`, ref.namespace, () =>
        api.patchNamespacedCustomObjectStatus(
          { ...resource, namespace: ref.namespace, name: ref.name, body },
          mergePatch,
        ),
      );
    },
  };
}

export const volumeProvisionApi = (config: KubeConfig): VolumeProvisionApi =>
  customObjectApi<VolumeProvision>(config, VOLUME_PROVISION.plural);

export function secretReader(config: KubeConfig): SecretReader {
  const core = config.makeApiClient(CoreV1Api);
  return {
    async read(namespace, name) {
      try {
        const secret = await inKubernetesSpan('GET', 'secrets', namespace, () =>
          core.readNamespacedSecret({ namespace, name }),
        );
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

export function eventRecorder<T extends KubernetesObject>(
  config: KubeConfig,
  options: EventRecorderOptions,
): EventRecorder<T> {
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
      inKubernetesSpan('CREATE', 'events', namespace, () =>
        core.createNamespacedEvent({
          namespace,
          body: {
            metadata: { generateName: `${name}.`, namespace },
            involvedObject: {
              apiVersion: object.apiVersion ?? API_VERSION,
              kind: object.kind ?? VOLUME_PROVISION.kind,
              name,
              namespace,
              uid,
            },
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
        }),
      ).catch(options.onError);
    },
  };
}
