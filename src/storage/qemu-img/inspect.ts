// Inspection before conversion: gathers the facts (first bytes, qemu-img info, and check for
// qcow2) and lets policy.ts decide. Each step runs only when the previous one passed: qemu-img
// never opens a file whose header contradicts its declared format, and check (which opens
// backing and data files) never runs on an image that names one.
import { open } from 'node:fs/promises';
import type { ImageFormat } from '../../api/v1alpha1.ts';
import { PipelineError } from '../../pipeline/types.ts';
import type { ImageInfo } from './image-info.ts';
import { evaluateCheck, evaluateHeader, evaluateInfo, headerBytes, type ImageVerdict } from './policy.ts';
import type { QemuImg } from './qemu-img.ts';

async function readHeader(path: string): Promise<Uint8Array> {
  const file = await open(path, 'r');
  try {
    const buffer = new Uint8Array(headerBytes);
    const { bytesRead } = await file.read(buffer, 0, headerBytes, 0);
    return buffer.subarray(0, bytesRead);
  } finally {
    await file.close();
  }
}

function enforce(verdict: ImageVerdict): void {
  if (!verdict.ok) throw new PipelineError(verdict.reason, verdict.message, { terminal: true });
}

/**
 * Returns the image's info when it may be converted into a target of `targetSizeBytes`;
 * otherwise throws a terminal PipelineError whose reason names the rule it broke.
 */
export async function inspectImage(
  qemuImg: QemuImg,
  path: string,
  declaredFormat: ImageFormat,
  targetSizeBytes: number,
): Promise<ImageInfo> {
  enforce(evaluateHeader(declaredFormat, await readHeader(path)));
  const info = await qemuImg.info(path, declaredFormat);
  enforce(evaluateInfo({ declaredFormat, info, targetSizeBytes }));
  if (declaredFormat === 'qcow2') enforce(evaluateCheck(await qemuImg.check(path, declaredFormat)));
  return info;
}
