// Serves a file that is still being downloaded to qemu-img, read-only, over NBD on a Unix
// socket: qemu-img can then convert a qcow2 image while it arrives, instead of after it.
// A read waits until the download has written every byte it asks for, so qemu-img never sees
// a byte that is not yet on disk. Only the fixed-newstyle handshake and simple replies are
// spoken (NBD_OPT_GO or NBD_OPT_EXPORT_NAME; READ and DISC), which is all qemu-img needs.
// See https://github.com/NetworkBlockDevice/nbd/blob/master/doc/proto.md.
import { type FileHandle, open } from 'node:fs/promises';
import { createServer, type Server, type Socket } from 'node:net';
import type { PartialFile } from '../download/index.ts';

const NBDMAGIC = 0x4e42444d41474943n;
const IHAVEOPT = 0x49484156454f5054n;
const OPTION_REPLY_MAGIC = 0x3e889045565a9n;
const REQUEST_MAGIC = 0x25609513;
const SIMPLE_REPLY_MAGIC = 0x67446698;

const HANDSHAKE_FIXED_NEWSTYLE = 1;
const HANDSHAKE_NO_ZEROES = 2;
const TRANSMISSION_HAS_FLAGS = 1;
const TRANSMISSION_READ_ONLY = 2;
const TRANSMISSION_FLAGS = TRANSMISSION_HAS_FLAGS | TRANSMISSION_READ_ONLY;

const OPT_EXPORT_NAME = 1;
const OPT_ABORT = 2;
const OPT_INFO = 6;
const OPT_GO = 7;
const REP_ACK = 1;
const REP_INFO = 3;
const REP_ERR_UNSUP = 0x80000001;
const REP_ERR_INVALID = 0x80000003;
const INFO_EXPORT = 0;

const CMD_READ = 0;
const CMD_WRITE = 1;
const CMD_DISC = 2;
const EPERM = 1;
const EIO = 5;
const EINVAL = 22;
const ENOTSUP = 95;

/** Options are tiny; anything longer is not a client of ours. */
const MAX_OPTION_BYTES = 4096;
/** qemu-img asks for at most 32 MiB at once. */
const MAX_READ_BYTES = 32 * 1024 * 1024;
/** qemu-img convert reads at most 2 MiB at once. */
const REPLY_BUFFER_BYTES = 2 * 1024 * 1024;
/** Reads from the page cache are quick: a few at a time keep qemu-img busy. */
const MAX_REPLY_BUFFERS = 4;

/** Reads the socket's bytes on demand: handshake and requests are parsed in order. */
class SocketReader {
  #buffered: Buffer[] = [];
  #length = 0;
  #wake: (() => void) | undefined;
  #ended = false;

  constructor(socket: Socket) {
    socket.on('data', (data: Buffer) => {
      this.#buffered.push(data);
      this.#length += data.length;
      this.#wake?.();
    });
    const end = () => {
      this.#ended = true;
      this.#wake?.();
    };
    socket.on('end', end);
    socket.on('close', end);
  }

  /** The next `length` bytes, or undefined once the client has gone. */
  async take(length: number): Promise<Buffer | undefined> {
    while (this.#length < length) {
      if (this.#ended) return undefined;
      await new Promise<void>((resolve) => {
        this.#wake = resolve;
      });
      this.#wake = undefined;
    }
    const all = this.#buffered.length === 1 ? this.#buffered[0] : Buffer.concat(this.#buffered);
    if (all === undefined) return Buffer.alloc(0);
    const taken = all.subarray(0, length);
    const rest = all.subarray(length);
    this.#buffered = rest.length > 0 ? [rest] : [];
    this.#length = rest.length;
    return taken;
  }
}

export class GrowingExport {
  readonly #sizeBytes: number;
  readonly #server: Server;
  #socketPath = '';
  readonly #sockets = new Set<Socket>();
  #file: Promise<FileHandle> | undefined;
  /** Bytes from offset 0 that are on disk. */
  #available = 0;
  #failure: Error | undefined;
  /** Reads waiting for bytes not yet written. */
  readonly #waiting = new Set<() => void>();
  readonly #buffers = new ReplyBuffers();

  /** `sizeBytes`: the size the file will have once the download ends, the export's size. */
  constructor(sizeBytes: number) {
    this.#sizeBytes = sizeBytes;
    this.#server = createServer((socket) => {
      this.#sockets.add(socket);
      socket.on('close', () => this.#sockets.delete(socket));
      socket.on('error', () => socket.destroy());
      this.#serve(socket).catch(() => socket.destroy());
    });
  }

  /** What qemu-img opens: `-f qcow2 <url>`. */
  get url(): string {
    return `nbd+unix:///?socket=${this.#socketPath}`;
  }

  /** Listens on a Unix socket, in a folder that only this process should be able to open. */
  listen(socketPath: string): Promise<void> {
    this.#socketPath = socketPath;
    return new Promise((resolve, reject) => {
      this.#server.once('error', reject);
      this.#server.listen(socketPath, () => {
        this.#server.off('error', reject);
        resolve();
      });
    });
  }

  /**
   * The download has written bytes [0, bytes) of `path`. The file is opened at the first call,
   * so the download may rename it later. A smaller figure means the download starts over and
   * is about to empty the file: the export then fails, since a read in flight could return
   * the emptied file's zeros.
   */
  written({ path, bytes }: PartialFile): void {
    if (bytes < this.#available) this.fail(new Error('the download started over'));
    if (this.#file === undefined) {
      this.#file = open(path, 'r');
      // A failed open answers the reads with EIO (read); it must not go unhandled here.
      this.#file.catch(() => {});
    }
    this.#available = Math.min(bytes, this.#sizeBytes);
    for (const wake of this.#waiting) wake();
  }

  /** The download failed or stopped: every read from now on answers EIO. */
  fail(error: Error): void {
    this.#failure ??= error;
    for (const wake of this.#waiting) wake();
  }

  /** Stops listening, drops every client and closes the file. */
  async close(): Promise<void> {
    this.fail(new Error('the export closed'));
    for (const socket of this.#sockets) socket.destroy();
    await new Promise<void>((resolve) => this.#server.close(() => resolve()));
    await (await this.#file?.catch(() => undefined))?.close();
  }

  async #serve(socket: Socket): Promise<void> {
    const reader = new SocketReader(socket);
    const greeting = Buffer.alloc(18);
    greeting.writeBigUInt64BE(NBDMAGIC, 0);
    greeting.writeBigUInt64BE(IHAVEOPT, 8);
    greeting.writeUInt16BE(HANDSHAKE_FIXED_NEWSTYLE | HANDSHAKE_NO_ZEROES, 16);
    socket.write(greeting);
    const clientFlags = await reader.take(4);
    if (!clientFlags) return;
    const noZeroes = (clientFlags.readUInt32BE(0) & HANDSHAKE_NO_ZEROES) !== 0;
    if (await this.#negotiate(socket, reader, noZeroes)) await this.#transmit(socket, reader);
    socket.end();
  }

  /** Answers options until the client picks the export (true) or leaves (false). */
  async #negotiate(socket: Socket, reader: SocketReader, noZeroes: boolean): Promise<boolean> {
    for (;;) {
      const head = await reader.take(16);
      if (!head || head.readBigUInt64BE(0) !== IHAVEOPT) return false;
      const option = head.readUInt32BE(8);
      const length = head.readUInt32BE(12);
      if (length > MAX_OPTION_BYTES) return false;
      const data = await reader.take(length);
      if (!data) return false;
      switch (option) {
        case OPT_EXPORT_NAME: {
          // No reply header: the export's size and flags, then (unless declined) 124 zeros.
          const answer = Buffer.alloc(noZeroes ? 10 : 134);
          answer.writeBigUInt64BE(BigInt(this.#sizeBytes), 0);
          answer.writeUInt16BE(TRANSMISSION_FLAGS, 8);
          socket.write(answer);
          return true;
        }
        case OPT_INFO:
        case OPT_GO: {
          if (!validInfoRequest(data)) {
            optionReply(socket, option, REP_ERR_INVALID);
            break;
          }
          const info = Buffer.alloc(12);
          info.writeUInt16BE(INFO_EXPORT, 0);
          info.writeBigUInt64BE(BigInt(this.#sizeBytes), 2);
          info.writeUInt16BE(TRANSMISSION_FLAGS, 10);
          optionReply(socket, option, REP_INFO, info);
          optionReply(socket, option, REP_ACK);
          if (option === OPT_GO) return true;
          break;
        }
        case OPT_ABORT:
          optionReply(socket, option, REP_ACK);
          return false;
        default:
          // Structured replies, metadata contexts, TLS, listing: not needed, so not offered.
          optionReply(socket, option, REP_ERR_UNSUP);
      }
    }
  }

  async #transmit(socket: Socket, reader: SocketReader): Promise<void> {
    for (;;) {
      const request = await reader.take(28);
      if (!request || request.readUInt32BE(0) !== REQUEST_MAGIC) return;
      const type = request.readUInt16BE(6);
      const cookie = request.subarray(8, 16);
      const offset = Number(request.readBigUInt64BE(16));
      const length = request.readUInt32BE(24);
      if (type === CMD_DISC) return;
      if (type !== CMD_READ) {
        // A write carries its data after the header: a client that sends one to a read-only
        // export is not one of ours, so it is answered and dropped.
        simpleReply(socket, cookie, type === CMD_WRITE ? EPERM : ENOTSUP);
        if (type === CMD_WRITE) return;
        continue;
      }
      if (length > MAX_READ_BYTES || offset + length > this.#sizeBytes) {
        simpleReply(socket, cookie, EINVAL);
        continue;
      }
      // Answered as soon as its bytes are there; qemu-img matches replies by cookie.
      void this.#answerRead(socket, cookie, offset, length);
    }
  }

  async #answerRead(socket: Socket, cookie: Buffer, offset: number, length: number): Promise<void> {
    // A buffer only once the bytes are there: reads that wait hold none.
    await this.#arrival(offset + length);
    const buffer = await this.#buffers.take(length);
    const read = await this.#readInto(buffer, offset, length);
    simpleReply(socket, cookie, read ? 0 : EIO, read ? buffer.subarray(0, length) : undefined, () =>
      this.#buffers.give(buffer),
    );
  }

  /** Waits until [offset, offset + length) is on disk, then reads it; undefined on failure. */
  async read(offset: number, length: number): Promise<Buffer | undefined> {
    await this.#arrival(offset + length);
    const data = Buffer.alloc(length);
    return (await this.#readInto(data, offset, length)) ? data : undefined;
  }

  /** Resolves once bytes [0, end) are on disk, or the download failed. */
  async #arrival(end: number): Promise<void> {
    while (this.#failure === undefined && this.#available < end) {
      await new Promise<void>((resolve) => {
        const wake = () => {
          this.#waiting.delete(wake);
          resolve();
        };
        this.#waiting.add(wake);
      });
    }
  }

  async #readInto(data: Buffer, offset: number, length: number): Promise<boolean> {
    if (this.#failure !== undefined || this.#file === undefined) return false;
    try {
      const file = await this.#file;
      // Zeros the download skipped are holes, and the file may end before them: they read as 0.
      const { bytesRead } = await file.read(data, 0, length, offset);
      data.fill(0, bytesRead, length);
      // Not if the download started over while the read ran.
      return this.#failure === undefined;
    } catch {
      return false;
    }
  }
}

/**
 * Buffers for read replies, reused once the socket has sent them, and at most
 * MAX_REPLY_BUFFERS at a time. A new buffer per read would pile up as external memory until
 * V8's next full GC (as the download's batches did), and qemu-img's 16 requests in flight,
 * all answered at once when their bytes arrive, would hold 32 MiB.
 */
class ReplyBuffers {
  readonly #free: Buffer[] = [];
  readonly #waiting: (() => void)[] = [];
  #inUse = 0;

  async take(length: number): Promise<Buffer> {
    while (this.#inUse >= MAX_REPLY_BUFFERS)
      await new Promise<void>((resolve) => this.#waiting.push(resolve));
    this.#inUse += 1;
    if (length > REPLY_BUFFER_BYTES) return Buffer.allocUnsafe(length);
    return this.#free.pop() ?? Buffer.allocUnsafe(REPLY_BUFFER_BYTES);
  }

  give(buffer: Buffer): void {
    this.#inUse -= 1;
    if (buffer.length === REPLY_BUFFER_BYTES) this.#free.push(buffer);
    this.#waiting.shift()?.();
  }
}

/** GO and INFO: a name length, the name, a count of info requests, then the requests. */
function validInfoRequest(data: Buffer): boolean {
  if (data.length < 6) return false;
  const nameLength = data.readUInt32BE(0);
  if (data.length < 6 + nameLength) return false;
  const requests = data.readUInt16BE(4 + nameLength);
  return data.length === 6 + nameLength + 2 * requests;
}

function optionReply(socket: Socket, option: number, type: number, data?: Buffer): void {
  const head = Buffer.alloc(20);
  head.writeBigUInt64BE(OPTION_REPLY_MAGIC, 0);
  head.writeUInt32BE(option, 8);
  head.writeUInt32BE(type, 12);
  head.writeUInt32BE(data?.length ?? 0, 16);
  socket.write(data ? Buffer.concat([head, data]) : head);
}

/** `sent` runs once the data left (or can no longer leave): its buffer may be reused. */
function simpleReply(socket: Socket, cookie: Buffer, error: number, data?: Buffer, sent?: () => void): void {
  const head = Buffer.alloc(16);
  head.writeUInt32BE(SIMPLE_REPLY_MAGIC, 0);
  head.writeUInt32BE(error, 4);
  cookie.copy(head, 8);
  if (!socket.destroyed && data) {
    socket.write(head);
    socket.write(data, () => sent?.());
    return;
  }
  if (!socket.destroyed) socket.write(head);
  sent?.();
}
