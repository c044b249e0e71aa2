// Writes a qcow2 image into its target while it downloads (see target-mirror.ts), decoding the
// clusters as they arrive: the header names the L1 table, the L1 table the L2 tables, and each
// L2 table where its guest clusters' bytes are in the file. Images written by qemu-img put an
// L2 table before the clusters it maps, so nearly every byte is placed as it arrives; the rest
// (bytes that came before the table that maps them) is read back from the downloaded file at
// the end. Compressed clusters are inflated as qemu does (raw deflate, one cluster each).
//
// Only what storage/qcow2/layout.ts decodes exactly as qemu does is mirrored; anything else
// (a backing file, encryption, incompatible features, reserved bits, an unaligned offset)
// detaches the mirror, and qemu-img converts the image after the download instead.
import { open } from 'node:fs/promises';
import { promisify } from 'node:util';
import { constants, inflateRaw } from 'node:zlib';
import {
  type ClusterMapping,
  decodeL1Entry,
  decodeL2Entry,
  guestBytesPerL2Table,
  HEADER_BYTES,
  parseHeader,
  type Qcow2Header,
} from '../storage/qcow2/layout.ts';
import { TargetMirror, type TargetMirrorOptions } from './target-mirror.ts';

const inflate = promisify(inflateRaw);

export interface Qcow2MirrorOptions extends TargetMirrorOptions {
  /** The target's size: an image whose virtual size exceeds it is left to inspection to refuse. */
  targetBytes: number;
}

/** Bytes of the file that must be whole before they mean anything: a table or a compressed cluster. */
interface Region {
  start: number;
  end: number;
  /** Allocated when its first byte arrives: an L1 table may name thousands of L2 tables. */
  bytes?: Buffer;
  /** Bytes from `start` copied into `bytes`. */
  filled: number;
  complete(bytes: Buffer): void;
}

/** Guest bytes to write at one offset. */
interface Piece {
  guestOffset: number;
  bytes: Buffer[];
}

/** A compressed cluster being inflated: its bytes, or why it cannot be. */
interface Inflating {
  guestOffset: number;
  cluster: Promise<Buffer | string>;
}

/** Guest bytes whose file bytes passed before their mapping was known: read back at the end. */
interface LateCopy {
  fileOffset: number;
  guestOffset: number;
  length: number;
}

/**
 * At most this many tables and clusters may wait for their bytes or be read back: about 100
 * bytes each.
 * Images from qemu-img keep a single L2 table's worth waiting (8,192 with 64 KiB clusters).
 */
const MAX_WAITING_CLUSTERS = 262_144;
/**
 * Inflated bytes held at once. A batch of 4 MiB can hold thousands of compressed clusters of
 * nearly nothing but zeros, each inflating to a whole cluster (up to 2 MiB).
 */
const INFLATED_BYTES_AT_ONCE = 8 * 1024 * 1024;
/** Reads of the downloaded file at the end. */
const READ_BACK_BYTES = 4 * 1024 * 1024;

export class Qcow2TargetMirror extends TargetMirror {
  readonly #targetBytes: number;
  #header: Qcow2Header | undefined;
  /** Bytes received from offset 0. */
  #received = 0;
  /** The batch being placed: [#batchStart, #received) of the file. */
  #batchStart = 0;
  /** Regions still filling as bytes arrive, by start once sorted. */
  #filling: Region[] = [];
  #unsorted = false;
  /** Regions whose first bytes passed before they were known. */
  #lateRegions: Region[] = [];
  /** Data clusters still to arrive: file offset → the guest offsets that read it. */
  #waiting = new Map<number, number[]>();
  #lateCopies: LateCopy[] = [];
  #inflating: Inflating[] = [];
  /** Set while the regions are completed from the downloaded file: nothing arrives any more. */
  #streamEnded = false;
  /** A table or cluster lies past the file's end: qemu-img decides what that means. */
  #pastEnd = false;

  constructor(options: Qcow2MirrorOptions) {
    super(options);
    this.#targetBytes = options.targetBytes;
  }

  protected async received(chunks: readonly Buffer[], position: number): Promise<void> {
    if (position !== this.#received)
      return this.detach(`the download went from byte ${this.#received} to ${position}`);
    const length = chunks.reduce((sum, chunk) => sum + chunk.length, 0);
    this.#batchStart = position;
    this.#received = position + length;
    if (position === 0 && !this.#start(Buffer.concat(chunks, Math.min(HEADER_BYTES, length)))) return;
    // Completing a region may define regions further on in the same batch.
    while (!this.detached) {
      const completed = this.#fill(chunks, position);
      if (completed.length === 0) break;
      for (const region of completed) {
        region.complete(region.bytes as Buffer);
        await this.#boundInflating();
      }
    }
    if (!this.detached) await this.#placeData(chunks, position);
    await this.#writeInflated();
  }

  protected async completed(downloadedPath: string): Promise<boolean> {
    if (this.#header === undefined || this.#received !== this.options.imageBytes) return false;
    this.#streamEnded = true;
    const file = await open(downloadedPath, 'r');
    let readBack = false;
    try {
      const read = async (offset: number, length: number) => {
        readBack = true;
        const bytes = Buffer.alloc(length);
        const { bytesRead } = await file.read(bytes, 0, length, offset);
        return bytes.subarray(0, bytesRead);
      };
      while (this.#lateRegions.length > 0 && !this.detached) {
        const region = this.#lateRegions.shift() as Region;
        const bytes = await read(region.start, region.end - region.start);
        if (bytes.length < region.end - region.start) return false;
        region.complete(bytes);
        await this.#boundInflating();
      }
      await this.#writeInflated();
      if (this.#pastEnd || this.#filling.length > 0 || this.#waiting.size > 0 || this.detached) return false;
      const copies = this.#lateCopies.sort((a, b) => a.fileOffset - b.fileOffset);
      for (const copy of copies) {
        for (let done = 0; done < copy.length && !this.detached; done += READ_BACK_BYTES) {
          const length = Math.min(READ_BACK_BYTES, copy.length - done);
          const bytes = await read(copy.fileOffset + done, length);
          if (bytes.length < length) return false;
          await this.writeTarget([bytes], copy.guestOffset + done);
        }
      }
      return !this.detached;
    } finally {
      await file.close();
      // What was read back stays out of the page cache, as a conversion's O_DIRECT reads do.
      if (readBack) await this.options.pageCache.evict(downloadedPath);
    }
  }

  /** Copies the batch into the regions it overlaps; returns (and drops) those now whole. */
  #fill(chunks: readonly Buffer[], position: number): Region[] {
    if (this.#unsorted) this.#filling.sort((a, b) => a.start - b.start);
    this.#unsorted = false;
    const completed: Region[] = [];
    for (const region of this.#filling) {
      if (region.start >= this.#received) break;
      copyInto(region, chunks, position, this.#received);
      if (region.bytes?.length === region.filled) completed.push(region);
    }
    if (completed.length > 0)
      this.#filling = this.#filling.filter((region) => region.bytes?.length !== region.filled);
    return completed;
  }

  /** Reads the header from the first batch; false if the mirror detached. */
  #start(first: Buffer): boolean {
    const header = parseHeader(first);
    if (typeof header === 'string') {
      this.detach(header);
      return false;
    }
    if (this.options.isBlockDevice) {
      // Its unmapped ranges would need zeros written; qemu-img does that.
      this.detach('a block device target is written by qemu-img');
      return false;
    }
    if (header.virtualSize > this.#targetBytes) {
      this.detach(`the virtual size ${header.virtualSize} exceeds the target's ${this.#targetBytes} bytes`);
      return false;
    }
    this.#header = header;
    this.#track(header.l1Offset, header.l1Entries * 8, (l1) => this.#mapL1(header, l1));
    return true;
  }

  /** Starts filling a region, or reads it back at the end if its first bytes have passed. */
  #track(start: number, length: number, complete: Region['complete']): void {
    const end = Math.min(start + length, this.options.imageBytes);
    if (end <= start) {
      this.#pastEnd = true;
      return;
    }
    const region: Region = { start, end, filled: 0, complete };
    if (this.#streamEnded || start < this.#batchStart) this.#lateRegions.push(region);
    else {
      this.#filling.push(region);
      this.#unsorted = true;
    }
  }

  #mapL1(header: Qcow2Header, l1: Buffer): void {
    const guestPerTable = guestBytesPerL2Table(header);
    for (let index = 0; index * guestPerTable < header.virtualSize; index += 1) {
      const tableOffset = decodeL1Entry(header, l1.readBigUInt64BE(index * 8));
      if (typeof tableOffset === 'string') {
        this.detach(tableOffset);
        return;
      }
      const guestStart = index * guestPerTable;
      if (tableOffset !== 0)
        this.#track(tableOffset, header.clusterSize, (table) => this.#mapL2(header, table, guestStart));
    }
    this.#boundWaiting();
  }

  #mapL2(header: Qcow2Header, table: Buffer, guestStart: number): void {
    for (let index = 0; index < table.length / 8; index += 1) {
      const guestOffset = guestStart + index * header.clusterSize;
      if (guestOffset >= header.virtualSize) break;
      const mapping: ClusterMapping | string = decodeL2Entry(header, table.readBigUInt64BE(index * 8));
      if (typeof mapping === 'string') {
        this.detach(mapping);
        return;
      }
      if (mapping.kind === 'data') this.#mapData(header, mapping.offset, guestOffset);
      else if (mapping.kind === 'compressed')
        this.#track(mapping.offset, mapping.length, (compressed) =>
          this.#inflate(header, compressed, guestOffset),
        );
      // Zeros need no write: a new file reads as zeros, and a block device is not mirrored.
    }
    this.#boundWaiting();
  }

  /** Keeps what waits for its bytes (or to be read back) within MAX_WAITING_CLUSTERS. */
  #boundWaiting(): void {
    const waiting =
      this.#waiting.size + this.#lateCopies.length + this.#lateRegions.length + this.#filling.length;
    if (waiting > MAX_WAITING_CLUSTERS)
      this.detach(`more than ${MAX_WAITING_CLUSTERS} tables and clusters wait for their bytes`);
  }

  #mapData(header: Qcow2Header, fileOffset: number, guestOffset: number): void {
    const length = Math.min(header.clusterSize, header.virtualSize - guestOffset);
    const passed = this.#streamEnded ? length : Math.max(0, Math.min(length, this.#batchStart - fileOffset));
    if (passed > 0) this.#lateCopies.push({ fileOffset, guestOffset, length: passed });
    if (passed === length) return;
    const guests = this.#waiting.get(fileOffset);
    if (guests) guests.push(guestOffset);
    else this.#waiting.set(fileOffset, [guestOffset]);
  }

  /** Starts inflating a compressed cluster on the thread pool; #writeInflated writes it. */
  #inflate(header: Qcow2Header, compressed: Buffer, guestOffset: number): void {
    // The region may run on past the stream's end, as qemu's read does: sync flush, not finish.
    const cluster = inflate(compressed, {
      finishFlush: constants.Z_SYNC_FLUSH,
      maxOutputLength: header.clusterSize,
    }).then(
      (inflated) =>
        inflated.length === header.clusterSize
          ? inflated.subarray(0, Math.min(header.clusterSize, header.virtualSize - guestOffset))
          : `a compressed cluster inflates to ${inflated.length} bytes, not ${header.clusterSize}`,
      (error: unknown) => `a compressed cluster does not inflate: ${(error as Error).message}`,
    );
    this.#inflating.push({ guestOffset, cluster });
  }

  /** Writes what inflates once it would hold more than INFLATED_BYTES_AT_ONCE. */
  async #boundInflating(): Promise<void> {
    const clusterSize = this.#header?.clusterSize ?? 0;
    if ((this.#inflating.length + 1) * clusterSize > INFLATED_BYTES_AT_ONCE) await this.#writeInflated();
  }

  /**
   * Writes the clusters inflating since the last call, runs of guest bytes at once. They
   * inflate side by side: one at a time, inflating took three times as long as qemu-img's
   * conversion of the same image.
   */
  async #writeInflated(): Promise<void> {
    const inflating = this.#inflating.splice(0);
    const clusters = await Promise.all(inflating.map(({ cluster }) => cluster));
    const pieces: Piece[] = [];
    for (const [index, cluster] of clusters.entries()) {
      if (typeof cluster === 'string') return this.detach(cluster);
      pieces.push({ guestOffset: (inflating[index] as Inflating).guestOffset, bytes: [cluster] });
    }
    await this.#writePieces(pieces);
  }

  /** Writes the batch's data clusters whose guest offsets are known, runs of guest bytes at once. */
  async #placeData(chunks: readonly Buffer[], position: number): Promise<void> {
    const header = this.#header;
    if (header === undefined || this.#waiting.size === 0) return;
    const end = this.#received;
    const pieces: Piece[] = [];
    const firstCluster = position - (position % header.clusterSize);
    for (let cluster = firstCluster; cluster < end; cluster += header.clusterSize) {
      const guests = this.#waiting.get(cluster);
      if (!guests) continue;
      const from = Math.max(cluster, position);
      const length = Math.min(cluster + header.clusterSize, end) - from;
      for (const guest of guests) {
        const guestLength = Math.min(length, header.virtualSize - guest - (from - cluster));
        if (guestLength > 0)
          pieces.push({
            guestOffset: guest + from - cluster,
            bytes: sliceBatch(chunks, position, from, guestLength),
          });
      }
      if (cluster + header.clusterSize <= end) this.#waiting.delete(cluster);
    }
    await this.#writePieces(pieces);
  }

  /** Writes the pieces in guest order, each run of adjacent ones with one write. */
  async #writePieces(pieces: Piece[]): Promise<void> {
    pieces.sort((a, b) => a.guestOffset - b.guestOffset);
    let run: Buffer[] = [];
    let runStart = 0;
    let runEnd = 0;
    for (const piece of pieces) {
      if (run.length > 0 && piece.guestOffset !== runEnd) {
        await this.writeTarget(run, runStart);
        run = [];
      }
      if (run.length === 0) runStart = piece.guestOffset;
      run.push(...piece.bytes);
      runEnd = piece.guestOffset + piece.bytes.reduce((sum, bytes) => sum + bytes.length, 0);
    }
    if (run.length > 0) await this.writeTarget(run, runStart);
  }
}

/** Copies the batch's bytes, [position, batchEnd) of the file, that the region still lacks. */
function copyInto(region: Region, chunks: readonly Buffer[], position: number, batchEnd: number): void {
  const from = region.start + region.filled;
  if (from < position || from >= batchEnd) return;
  const length = Math.min(region.end, batchEnd) - from;
  region.bytes ??= Buffer.alloc(region.end - region.start);
  for (const piece of sliceBatch(chunks, position, from, length)) {
    piece.copy(region.bytes, region.filled);
    region.filled += piece.length;
  }
}

/** The batch's bytes [offset, offset + length) as views of its chunks. */
function sliceBatch(chunks: readonly Buffer[], position: number, offset: number, length: number): Buffer[] {
  const views: Buffer[] = [];
  let chunkStart = position;
  for (const chunk of chunks) {
    const chunkEnd = chunkStart + chunk.length;
    const from = Math.max(offset, chunkStart);
    const to = Math.min(offset + length, chunkEnd);
    if (from < to) views.push(chunk.subarray(from - chunkStart, to - chunkStart));
    chunkStart = chunkEnd;
  }
  return views;
}
