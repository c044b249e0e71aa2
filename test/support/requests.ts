// Provision requests as the controller makes them from a VolumeProvision with a file target,
// for tests that drive the Provisioner against the rig's MinIO.
import type { ImageFormat } from '../../src/api/v1alpha1.ts';
import type { ProvisionRequest } from '../../src/pipeline/types.ts';

export interface FileRequestOptions {
  bucket: string;
  key: string;
  volumeName: string;
  format: ImageFormat;
  sizeBytes: number;
  credentials: { accessKeyId: string; secretKey: string };
  checksum?: string;
}

/** Makes requests, each with a UID of its own. */
export function fileRequests(): (options: FileRequestOptions) => ProvisionRequest {
  let uidCounter = 0;
  return ({ bucket, key, volumeName, format, sizeBytes, credentials, checksum }) => ({
    uid: `00000000-0000-4000-8000-${String(++uidCounter).padStart(12, '0')}`,
    namespace: 'default',
    name: volumeName,
    spec: {
      nodeName: 'node-a',
      source: { url: `s3://${bucket}/${key}`, format, ...(checksum ? { checksum } : {}) },
      target: { type: 'file', volumeName, size: sizeBytes },
      reclaimPolicy: 'Delete',
    },
    credentials,
  });
}
