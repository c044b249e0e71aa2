// qemu-img behind one small interface. Every call passes an argument array (never a shell),
// runs with LC_ALL=C so messages do not depend on the node's locale, and always names the
// format: qemu-img never probes a file this controller did not make.
import { rm } from 'node:fs/promises';
import { execa } from 'execa';
import type { ImageFormat } from '../../api/v1alpha1.ts';
import { PipelineError } from '../../pipeline/types.ts';
import {
  type CheckResult,
  type ImageInfo,
  ImageInfoParseError,
  parseCheckResult,
  parseImageInfo,
} from './image-info.ts';
import { ConvertProgressParser } from './progress.ts';

export interface ConvertOptions {
  source: string;
  sourceFormat: ImageFormat;
  /** A raw file (created or replaced) or a block device (written in place, never created). */
  target: string;
  targetIsBlockDevice: boolean;
  /** `source` is an NBD URL (storage/nbd), whose server reads the file: no O_DIRECT there. */
  sourceIsExport?: boolean;
  /** Aborting it kills qemu-img; convert then rejects with the signal's reason. */
  signal?: AbortSignal;
  /** Percent done, 0 to 100, rising only; the last call reports 100 on success. */
  onProgress?: (percent: number) => void;
}

export interface QemuImg {
  /** `qemu-img info` of one image opened as `format`; backing and data files are not opened. */
  info(path: string, format: ImageFormat): Promise<ImageInfo>;
  /** `qemu-img check` (read-only, never repairs); the result's status carries the verdict. */
  check(path: string, format: ImageFormat): Promise<CheckResult>;
  /** `qemu-img convert` to raw. Rejects with a PipelineError when qemu-img fails. */
  convert(options: ConvertOptions): Promise<void>;
}

export interface QemuImgOptions {
  /** Path or name of the binary; default `qemu-img` from PATH. */
  binary?: string;
  /** Limit for info and check, which parse untrusted metadata; default 2 minutes. */
  inspectTimeoutMs?: number;
  /** Grace between SIGTERM and SIGKILL when a conversion is cancelled; default 5 s. */
  killGraceMs?: number;
}

/**
 * Cache options by target kind, chosen by measurement (docs/conversion.md). Both bound the dirty
 * page cache by construction (the default and `writeback` dirty the whole image's data, which a
 * container's memory limit counts) and return with the data durable:
 * - a block device (an LV): `-t none`, O_DIRECT, so no page cache at all; the fastest into an LV.
 * - a file: `-t writethrough -W`. Each write is flushed before its coroutine goes on, so at most
 *   `-m` (8) requests of 2 MiB are dirty at a time, and `-W` keeps all 8 in flight. About 30 %
 *   faster than O_DIRECT into an ext4 file. The pages stay cached, clean: the caller evicts them.
 * - `-T none` reads the source with O_DIRECT: a cached image read once stays out of the page
 *   cache. The cache folder needs a filesystem with O_DIRECT (not tmpfs), and so does an LV.
 *   An NBD source has no O_DIRECT: its server reads the file as the download writes it.
 */
export function convertCacheOptions(targetIsBlockDevice: boolean, sourceIsExport = false): readonly string[] {
  const directSource = sourceIsExport ? [] : ['-T', 'none'];
  return targetIsBlockDevice
    ? ['-t', 'none', ...directSource]
    : ['-t', 'writethrough', ...directSource, '-W'];
}

/** qemu-img's stderr, trimmed to what a status message can carry. */
function qemuImgMessage(stderr: string): string {
  const text = stderr.trim().replace(/^qemu-img: /gm, '');
  return text.length > 1000 ? `${text.slice(0, 1000)}…` : text;
}

export function createQemuImg(options: QemuImgOptions = {}): QemuImg {
  const binary = options.binary ?? 'qemu-img';
  const inspectTimeoutMs = options.inspectTimeoutMs ?? 120_000;
  const killGraceMs = options.killGraceMs ?? 5_000;
  const baseOptions = { env: { LC_ALL: 'C' }, stdin: 'ignore', reject: false } as const;

  /** Runs an inspection; a process that never ran or ran out of time is a retryable failure. */
  async function inspect(args: readonly string[]) {
    const result = await execa(binary, args, { ...baseOptions, timeout: inspectTimeoutMs });
    if (result.exitCode === undefined || result.timedOut) {
      throw new PipelineError(
        'QemuImgFailed',
        result.timedOut
          ? `qemu-img ${args[0]} did not finish within ${inspectTimeoutMs} ms`
          : `cannot run ${binary}: ${result.shortMessage ?? 'unknown error'}`,
        { terminal: false, cause: result },
      );
    }
    return { exitCode: result.exitCode, stdout: result.stdout, stderr: result.stderr };
  }

  /** Output that cannot be trusted means the image cannot be either. */
  function untrusted(error: unknown, path: string): never {
    if (error instanceof ImageInfoParseError) {
      throw new PipelineError('CorruptImage', `qemu-img output for ${path} is not usable: ${error.message}`, {
        terminal: true,
        cause: error,
      });
    }
    throw error;
  }

  return {
    async info(path, format) {
      const result = await inspect(['info', '--output=json', '-f', format, path]);
      if (result.exitCode !== 0) {
        throw new PipelineError(
          'CorruptImage',
          `qemu-img cannot open the image as ${format}: ${qemuImgMessage(result.stderr)}`,
          { terminal: true },
        );
      }
      try {
        return parseImageInfo(result.stdout);
      } catch (error) {
        return untrusted(error, path);
      }
    },

    async check(path, format) {
      const result = await inspect(['check', '--output=json', '-f', format, path]);
      try {
        const check = parseCheckResult(result.exitCode, result.stdout, result.stderr);
        return { ...check, detail: qemuImgMessage(check.detail) };
      } catch (error) {
        return untrusted(error, path);
      }
    },

    async convert({ source, sourceFormat, target, targetIsBlockDevice, sourceIsExport, signal, onProgress }) {
      signal?.throwIfAborted();
      const args = [
        'convert',
        '-p',
        '-f',
        sourceFormat,
        '-O',
        'raw',
        ...convertCacheOptions(targetIsBlockDevice, sourceIsExport),
        // A block device exists already and cannot be created; qemu-img still writes its zeros,
        // because a new LV may hold an old volume's data.
        ...(targetIsBlockDevice ? ['-n'] : []),
        source,
        target,
      ];
      const subprocess = execa(binary, args, {
        ...baseOptions,
        buffer: { stdout: false },
        ...(signal ? { cancelSignal: signal } : {}),
        forceKillAfterDelay: killGraceMs,
      });
      const progress = new ConvertProgressParser();
      subprocess.stdout.setEncoding('utf8');
      subprocess.stdout.on('data', (chunk: string) => {
        const percent = progress.push(chunk);
        if (percent !== undefined) onProgress?.(percent);
      });
      const result = await subprocess;

      if (result.failed) {
        // A file target holds half an image now; a block device belongs to its owner.
        if (!targetIsBlockDevice) await rm(target, { force: true });
        if (result.isCanceled && signal) throw signal.reason;
        throw new PipelineError(
          'ConversionFailed',
          `qemu-img convert ${source} to ${target} failed: ` +
            (qemuImgMessage(result.stderr) || (result.shortMessage ?? 'unknown error')),
          { terminal: false, cause: result },
        );
      }
      if (progress.percent < 100) onProgress?.(100);
    },
  };
}
