// Durability helpers shared by the cache and the downloader.
import { open } from 'node:fs/promises';

/** Makes renames in `folder` durable: the new directory entry is on disk, not just the data. */
export async function fsyncFolder(folder: string): Promise<void> {
  const handle = await open(folder, 'r');
  try {
    await handle.sync();
  } finally {
    await handle.close();
  }
}
