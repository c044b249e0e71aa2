// Source credentials from the Secret named in spec.source.secretRef, for both kinds.
import type { ImageSource } from '../api/v1alpha1.ts';
import type { SecretReader } from '../k8s/api.ts';
import { PipelineError, type SourceCredentials } from '../pipeline/types.ts';

export async function readSourceCredentials(
  secrets: SecretReader,
  namespace: string,
  source: ImageSource,
): Promise<SourceCredentials | undefined> {
  const secretName = source.secretRef?.name;
  if (!secretName) return undefined;
  const data = await secrets.read(namespace, secretName);
  if (!data) {
    // Not terminal: the Secret is often created right after the object.
    throw new PipelineError(
      'SecretNotFound',
      `Secret ${namespace}/${secretName} named in spec.source.secretRef does not exist`,
      { terminal: false },
    );
  }
  const credentials: SourceCredentials = {};
  if (data.accessKeyId) credentials.accessKeyId = data.accessKeyId;
  if (data.secretKey) credentials.secretKey = data.secretKey;
  if (data['ca.crt']) credentials.caBundle = data['ca.crt'];
  if ((credentials.accessKeyId === undefined) !== (credentials.secretKey === undefined)) {
    throw new PipelineError(
      'InvalidSecret',
      `Secret ${namespace}/${secretName} must hold both accessKeyId and secretKey, or neither`,
      { terminal: false },
    );
  }
  return credentials;
}
