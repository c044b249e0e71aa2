// What tests that drive the real Provisioner against the rig's MinIO, with file targets, build
// it from: requests as the controller makes them from a VolumeProvision, the node cache, the
// targets (no LVM) and a qemu-img that reports its conversions.
import { join } from 'node:path';
import type { ImageFormat } from '../../src/api/v1alpha1.ts';
import { FileTargets, type TargetBackend } from '../../src/pipeline/targets.ts';
import type { ProvisionRequest } from '../../src/pipeline/types.ts';
import { ImageCache } from '../../src/storage/cache/image-cache.ts';
import type { Downloader } from '../../src/storage/download/index.ts';
import { type ConvertOptions, createQemuImg, type QemuImg } from '../../src/storage/qemu-img/qemu-img.ts';
import { StateDatabase } from '../../src/storage/state/database.ts';

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

/** The node cache in `<workDir>/cache`, with its state in `<workDir>/state`, opened. */
export async function openNodeCache(workDir: string, downloader: Downloader): Promise<ImageCache> {
  const cache = new ImageCache({
    dir: join(workDir, 'cache'),
    database: StateDatabase.open(join(workDir, 'state', 'state.db')),
    downloader,
  });
  await cache.open();
  return cache;
}

const noLvm: TargetBackend = {
  check: () => Promise.reject(new Error('no LVM in this test')),
  prepare: () => Promise.reject(new Error('no LVM in this test')),
  release: () => Promise.reject(new Error('no LVM in this test')),
};

/** File targets in `targetDir`, their owners in `<workDir>/state`; LVM refuses every call. */
export function fileTargets(workDir: string, targetDir: string): Record<'file' | 'lvm', TargetBackend> {
  return { file: new FileTargets({ dir: targetDir, stateDir: join(workDir, 'state') }), lvm: noLvm };
}

/** The real qemu-img, telling `onConvert` of each conversion before it starts. */
export function observedQemuImg(onConvert: (options: ConvertOptions) => void): QemuImg {
  const real = createQemuImg();
  return {
    info: (path, format) => real.info(path, format),
    check: (path, format) => real.check(path, format),
    convert: (options) => {
      onConvert(options);
      return real.convert(options);
    },
  };
}
