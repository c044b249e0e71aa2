// Bearer-token checks for /metrics, as controller-runtime's secure metrics serving does: a
// static token (a mounted Secret, as the seed's ServiceMonitor sends), or the Kubernetes way:
// a TokenReview says who the caller is, a SubjectAccessReview whether they may GET /metrics.
import { createHash, timingSafeEqual } from 'node:crypto';
import { AuthenticationV1Api, AuthorizationV1Api, type KubeConfig } from '@kubernetes/client-node';

export type AuthResult = 'allowed' | 'unauthenticated' | 'forbidden';

/** Decides on the token of an `Authorization: Bearer` header. */
export type BearerCheck = (token: string) => Promise<AuthResult>;

const digest = (text: string) => createHash('sha256').update(text).digest();

export function staticTokenCheck(expected: string): BearerCheck {
  const wanted = digest(expected.trim());
  if (expected.trim() === '') throw new Error('the metrics bearer token is empty');
  // Comparing digests keeps the time independent of where the tokens differ, and of length.
  return async (token) => (timingSafeEqual(digest(token), wanted) ? 'allowed' : 'unauthenticated');
}

/** The Kubernetes calls the check makes; client-node's APIs by default. */
export interface ReviewApi {
  /** The authenticated user, or undefined when the token is not valid. */
  authenticate(token: string): Promise<ReviewedUser | undefined>;
  /** Whether the user may `verb` the non-resource `path`. */
  authorize(user: ReviewedUser, verb: string, path: string): Promise<boolean>;
}

export interface ReviewedUser {
  username: string;
  uid?: string;
  groups?: string[];
  extra?: Record<string, string[]>;
}

export function kubernetesReviewApi(kubeConfig: KubeConfig): ReviewApi {
  const authentication = kubeConfig.makeApiClient(AuthenticationV1Api);
  const authorization = kubeConfig.makeApiClient(AuthorizationV1Api);
  return {
    async authenticate(token) {
      const review = await authentication.createTokenReview({ body: { spec: { token } } });
      const user = review.status?.user;
      if (!review.status?.authenticated || !user?.username) return undefined;
      return {
        username: user.username,
        ...(user.uid ? { uid: user.uid } : {}),
        ...(user.groups ? { groups: user.groups } : {}),
        ...(user.extra ? { extra: user.extra } : {}),
      };
    },
    async authorize(user, verb, path) {
      const review = await authorization.createSubjectAccessReview({
        body: {
          spec: {
            user: user.username,
            ...(user.uid ? { uid: user.uid } : {}),
            ...(user.groups ? { groups: user.groups } : {}),
            ...(user.extra ? { extra: user.extra } : {}),
            nonResourceAttributes: { path, verb },
          },
        },
      });
      return review.status?.allowed === true;
    },
  };
}

/**
 * TokenReview + SubjectAccessReview for GET `path`. Decisions are cached for `ttlMs` per token
 * (digest), so a scrape every few seconds costs the API server two requests a minute.
 */
export function kubernetesTokenCheck(
  api: ReviewApi,
  options: { path: string; ttlMs?: number; now?: () => number },
): BearerCheck {
  const ttlMs = options.ttlMs ?? 60_000;
  const now = options.now ?? Date.now;
  const decisions = new Map<string, { result: AuthResult; until: number }>();
  return async (token) => {
    const key = digest(token).toString('hex');
    const cached = decisions.get(key);
    if (cached && cached.until > now()) return cached.result;
    const user = await api.authenticate(token);
    const result: AuthResult = !user
      ? 'unauthenticated'
      : (await api.authorize(user, 'get', options.path))
        ? 'allowed'
        : 'forbidden';
    if (decisions.size > 1_000) decisions.clear();
    decisions.set(key, { result, until: now() + ttlMs });
    return result;
  };
}
