// Typed views of `qemu-img info` and `qemu-img check` JSON. The JSON describes a file that came
// from outside (a user's image), so parsing fails closed: a field that decides safety and is
// present with an unexpected type is an error, never "absent".

export interface ImageInfo {
  /** The format qemu-img opened the file as; with `-f` it echoes the declared format. */
  format: string;
  /** Size of the disk the guest sees, in bytes. */
  virtualSize: number;
  /** Bytes the file occupies on the host's disk, when qemu-img could tell. */
  actualSize?: number;
  /** Set when the image reads unallocated clusters from another file. */
  backingFilename?: string;
  /** qcow2 only: the external file that holds the guest data instead of the image itself. */
  dataFile?: string;
  /** qcow2 only: true when qemu-img found the image's corrupt bit set. */
  corrupt?: boolean;
  encrypted?: boolean;
}

export interface CheckResult {
  /** clean (exit 0), leaks only (3), corrupt (2), check could not finish (1), format has no checks (63). */
  status: 'clean' | 'leaks' | 'corrupt' | 'incomplete' | 'unsupported';
  corruptions: number;
  leaks: number;
  /** qemu-img's own words, for the person reading the rejection. */
  detail: string;
}

export class ImageInfoParseError extends Error {
  override readonly name = 'ImageInfoParseError';
}

type JsonObject = Record<string, unknown>;

function isObject(value: unknown): value is JsonObject {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

function parseObject(text: string, what: string): JsonObject {
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch {
    throw new ImageInfoParseError(`${what} did not print JSON`);
  }
  if (!isObject(value)) throw new ImageInfoParseError(`${what} printed JSON that is not an object`);
  return value;
}

function wrongType(key: string, expected: string, value: unknown): ImageInfoParseError {
  return new ImageInfoParseError(`"${key}" is not ${expected}: ${JSON.stringify(value)}`.slice(0, 200));
}

function optionalCount(object: JsonObject, key: string): number | undefined {
  const value = object[key];
  if (value === undefined) return undefined;
  // Sizes past 2^53 lose precision in JavaScript; refuse them rather than compare wrong numbers.
  if (typeof value !== 'number' || !Number.isSafeInteger(value) || value < 0) {
    throw wrongType(key, 'a non-negative integer', value);
  }
  return value;
}

function optionalString(object: JsonObject, key: string): string | undefined {
  const value = object[key];
  if (value === undefined) return undefined;
  if (typeof value !== 'string') throw wrongType(key, 'a string', value);
  return value;
}

function optionalBoolean(object: JsonObject, key: string): boolean | undefined {
  const value = object[key];
  if (value === undefined) return undefined;
  if (typeof value !== 'boolean') throw wrongType(key, 'a boolean', value);
  return value;
}

/** Parses `qemu-img info --output=json` for one image (not `--backing-chain`). */
export function parseImageInfo(text: string): ImageInfo {
  const json = parseObject(text, 'qemu-img info');
  const format = optionalString(json, 'format');
  if (!format) throw new ImageInfoParseError('"format" is missing');
  const virtualSize = optionalCount(json, 'virtual-size');
  if (virtualSize === undefined) throw new ImageInfoParseError('"virtual-size" is missing');

  const info: ImageInfo = { format, virtualSize };
  const actualSize = optionalCount(json, 'actual-size');
  if (actualSize !== undefined) info.actualSize = actualSize;
  // Either name of the backing file proves there is one.
  const backingFilename =
    optionalString(json, 'backing-filename') ?? optionalString(json, 'full-backing-filename');
  if (backingFilename !== undefined) info.backingFilename = backingFilename;
  const encrypted = optionalBoolean(json, 'encrypted');
  if (encrypted !== undefined) info.encrypted = encrypted;

  const formatSpecific = json['format-specific'];
  if (formatSpecific !== undefined) {
    if (!isObject(formatSpecific) || (formatSpecific.data !== undefined && !isObject(formatSpecific.data))) {
      throw new ImageInfoParseError('"format-specific" is not an object with object "data"');
    }
    const data = formatSpecific.data ?? {};
    const dataFile = optionalString(data, 'data-file');
    if (dataFile !== undefined) info.dataFile = dataFile;
    const corrupt = optionalBoolean(data, 'corrupt');
    if (corrupt !== undefined) info.corrupt = corrupt;
  }
  return info;
}

const checkStatusByExitCode: Readonly<Record<number, CheckResult['status']>> = {
  0: 'clean',
  1: 'incomplete',
  2: 'corrupt',
  3: 'leaks',
  63: 'unsupported',
};

/** Interprets `qemu-img check --output=json`: the exit code decides, the JSON adds counts. */
export function parseCheckResult(exitCode: number, stdout: string, stderr: string): CheckResult {
  const status = checkStatusByExitCode[exitCode];
  if (status === undefined)
    throw new ImageInfoParseError(`qemu-img check exited with unknown code ${exitCode}`);
  let corruptions = 0;
  let leaks = 0;
  // qemu-img prints no JSON when it could not open the image or has no checks for the format.
  if (stdout.trim() !== '') {
    const json = parseObject(stdout, 'qemu-img check');
    corruptions = optionalCount(json, 'corruptions') ?? 0;
    leaks = optionalCount(json, 'leaks') ?? 0;
  }
  return { status, corruptions, leaks, detail: stderr.trim() };
}
