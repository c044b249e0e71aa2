import { execFileSync } from 'node:child_process';

/** How many bytes of a file are in the page cache, by util-linux's fincore. */
export const residentBytes = (path: string): number =>
  Number(execFileSync('fincore', ['--noheadings', '--bytes', '--output', 'RES', path], { encoding: 'utf8' }));
