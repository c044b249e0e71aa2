// Reading the HTTP status out of the errors client-node and its Watch throw.
export function httpStatusOf(error: unknown): number | undefined {
  if (typeof error !== 'object' || error === null) return undefined;
  const record = error as { statusCode?: unknown; code?: unknown };
  const code = record.statusCode ?? record.code;
  return typeof code === 'number' ? code : undefined;
}

export function errorMessage(error: unknown): string {
  if (error instanceof Error) {
    const body = (error as { body?: unknown }).body;
    if (typeof body === 'string' && body.length > 0) {
      try {
        const status = JSON.parse(body) as { message?: unknown };
        if (typeof status.message === 'string') return status.message;
      } catch {
        // Not a Status object; fall back to the error's own message.
      }
    }
    return error.message;
  }
  return String(error);
}
