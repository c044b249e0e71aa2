// Expected checksums (from the spec or a `<key>.sha256` object) and the digests computed while
// the bytes stream past, so that the content is never read a second time.
import { createHash, type Hash } from 'node:crypto';
import { PipelineError } from '../../pipeline/types.ts';
import { DownloadReason } from './reasons.ts';

export type ChecksumAlgorithm = 'sha256' | 'sha512';

export interface ExpectedChecksum {
  algorithm: ChecksumAlgorithm;
  /** Lowercase hex. */
  hex: string;
  /** Where it came from, for the mismatch message. */
  origin: string;
}

const HEX_LENGTH: Record<ChecksumAlgorithm, number> = { sha256: 64, sha512: 128 };

/** Parses `spec.source.checksum`: `sha256:<64 hex>` or `sha512:<128 hex>`. */
export function parseChecksum(value: string): ExpectedChecksum {
  const match = /^(sha256|sha512):([0-9a-fA-F]+)$/.exec(value.trim());
  const algorithm = match?.[1] as ChecksumAlgorithm | undefined;
  const hex = match?.[2];
  if (!algorithm || !hex || hex.length !== HEX_LENGTH[algorithm])
    throw new PipelineError(
      DownloadReason.InvalidChecksum,
      `checksum "${value}" is not valid; expected sha256:<64 hex digits> or sha512:<128 hex digits>`,
      { terminal: true },
    );
  return { algorithm, hex: hex.toLowerCase(), origin: 'spec.source.checksum' };
}

/**
 * Parses the content of a `<key>.sha256` object: one line with 64 hex digits, optionally
 * followed by whitespace and a file name, as `sha256sum` prints it.
 */
export function parseSha256Sidecar(content: string, sidecarName: string): ExpectedChecksum {
  const lines = content.split(/\r?\n/).filter((line) => line.trim() !== '');
  const match = lines.length === 1 ? /^\s*([0-9a-fA-F]{64})(?:\s+\S.*)?\s*$/.exec(lines[0] ?? '') : null;
  const hex = match?.[1];
  if (!hex)
    throw new PipelineError(
      DownloadReason.InvalidChecksumSidecar,
      `${sidecarName} does not hold a sha256 checksum; expected one line "<64 hex digits> [file name]"`,
      { terminal: false },
    );
  return { algorithm: 'sha256', hex: hex.toLowerCase(), origin: sidecarName };
}

/** sha256 always (the cache records it); sha512 too when that is what must match. */
export class StreamingDigests {
  readonly #sha256: Hash = createHash('sha256');
  readonly #expected: Hash | undefined;

  constructor(expected: ExpectedChecksum | undefined) {
    this.#expected = expected?.algorithm === 'sha512' ? createHash('sha512') : undefined;
  }

  update(chunk: Uint8Array): void {
    this.#sha256.update(chunk);
    this.#expected?.update(chunk);
  }

  /** Finishes the digests; throws ChecksumMismatch when `expected` is not met. */
  verify(expected: ExpectedChecksum | undefined): { sha256: string } {
    const sha256 = this.#sha256.digest('hex');
    if (expected) {
      const actual = expected.algorithm === 'sha256' ? sha256 : (this.#expected?.digest('hex') ?? '');
      if (actual !== expected.hex)
        throw new PipelineError(
          DownloadReason.ChecksumMismatch,
          `checksum mismatch: ${expected.origin} expects ${expected.algorithm}:${expected.hex}, the downloaded content is ${expected.algorithm}:${actual}`,
          { terminal: true },
        );
    }
    return { sha256 };
  }
}
