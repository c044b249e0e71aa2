// Kubernetes resource quantities ("20Gi", "500M", "1e9") as byte counts.
const SUFFIXES: Record<string, number> = {
  '': 1,
  Ki: 2 ** 10,
  Mi: 2 ** 20,
  Gi: 2 ** 30,
  Ti: 2 ** 40,
  Pi: 2 ** 50,
  Ei: 2 ** 60,
  k: 1e3,
  M: 1e6,
  G: 1e9,
  T: 1e12,
  P: 1e15,
  E: 1e18,
};

/** Bytes in `quantity`, rounded up to a whole byte; throws on anything that is not a quantity. */
export function parseQuantity(quantity: string | number): number {
  if (typeof quantity === 'number') {
    if (!Number.isFinite(quantity) || quantity < 0) throw new RangeError(`invalid quantity ${quantity}`);
    return Math.ceil(quantity);
  }
  const match = /^([0-9]+(?:\.[0-9]+)?|\.[0-9]+)(?:([eE][+-]?[0-9]+)|(Ki|Mi|Gi|Ti|Pi|Ei|k|M|G|T|P|E))?$/.exec(
    quantity.trim(),
  );
  if (!match?.[1]) throw new RangeError(`"${quantity}" is not a Kubernetes quantity (e.g. 20Gi, 500M)`);
  const exponent = match[2] ? 10 ** Number(match[2].slice(1)) : 1;
  const bytes = Number(match[1]) * exponent * (SUFFIXES[match[3] ?? ''] ?? 1);
  if (!Number.isSafeInteger(Math.ceil(bytes))) throw new RangeError(`quantity "${quantity}" is too large`);
  return Math.ceil(bytes);
}
