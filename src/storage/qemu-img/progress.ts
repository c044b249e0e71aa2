// Reads `qemu-img convert -p` output: `    (12.34/100%)\r` about every 1 %, as a stream whose
// chunks may cut a report anywhere. The regex is the one KubeVirt CDI uses.
const progressReport = /\((\d{1,3}\.\d+)\/100%\)/g;

// A report is about 20 characters; keeping this much of an unfinished tail is always enough,
// and bounds the buffer whatever the process prints.
const maxPendingChars = 64;

export class ConvertProgressParser {
  #pending = '';
  #percent = 0;

  /** The highest percent seen so far; reports never go backwards. */
  get percent(): number {
    return this.#percent;
  }

  /** Feeds one chunk of stdout; returns the new percent when it rose, otherwise undefined. */
  push(chunk: string): number | undefined {
    const text = this.#pending + chunk;
    const before = this.#percent;
    let consumed = 0;
    for (const match of text.matchAll(progressReport)) {
      const value = Math.min(100, Number(match[1]));
      if (value > this.#percent) this.#percent = value;
      consumed = match.index + match[0].length;
    }
    this.#pending = text.slice(consumed).slice(-maxPendingChars);
    return this.#percent > before ? this.#percent : undefined;
  }
}
