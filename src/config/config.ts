// Controller configuration from, in rising precedence: defaults, a YAML file (--config or
// LVP_CONFIG), environment variables and command-line flags. One table defines every setting,
// so the defaults, the documentation (docs/configuration.md) and the errors cannot drift apart.
import { readFileSync } from 'node:fs';
import { parseArgs } from 'node:util';
import yaml from 'js-yaml';
import { parseQuantity } from '../api/quantity.ts';

type Kind = 'string' | 'integer' | 'number' | 'quantity' | 'url' | 'path';

interface Setting {
  key: keyof Config;
  env: string;
  flag: string;
  kind: Kind;
  default?: string | number;
  min?: number;
  max?: number;
  oneOf?: readonly string[];
  description: string;
}

/**
 * How a qcow2 image reaches its target while it downloads: decoded by the controller (auto, file
 * targets), converted by qemu-img over NBD (qemu, or auto into an LV), or only afterwards.
 */
export type WhileDownloading = 'auto' | 'qemu' | 'never';

export interface Config {
  nodeName: string;
  maxConcurrentJobs: number;
  statusUpdateIntervalSeconds: number;
  cacheDir: string;
  cacheMaxBytes?: number;
  cacheMaxAgeHours?: number;
  stateDir: string;
  fileTargetDir: string;
  lvmCommandPrefix?: string;
  libvirtUri: string;
  defaultVolumeGroup?: string;
  s3Endpoint?: string;
  s3Region: string;
  downloadConnections: number;
  convertWhileDownloading: WhileDownloading;
  logLevel: string;
  shutdownTimeoutSeconds: number;
  workers: number;
  logFormat: 'json' | 'text';
  serverPort: number;
  serverAddress: string;
  tlsCertFile?: string;
  tlsKeyFile?: string;
  tlsClientCaFile?: string;
  metricsAuth: 'none' | 'token' | 'kubernetes';
  metricsTokenFile?: string;
  otlpEndpoint?: string;
  otelServiceName: string;
  dependencyProbeIntervalSeconds: number;
}

export const SETTINGS: readonly Setting[] = [
  {
    key: 'nodeName',
    env: 'NODE_NAME',
    flag: 'node-name',
    kind: 'string',
    description:
      "This hypervisor's Kubernetes node name, from the downward API; only objects with this spec.nodeName are watched",
  },
  {
    key: 'maxConcurrentJobs',
    env: 'LVP_MAX_CONCURRENT_JOBS',
    flag: 'max-concurrent-jobs',
    kind: 'integer',
    default: 2,
    min: 1,
    max: 64,
    description: 'Jobs that run at once on this node; the rest wait in FIFO order',
  },
  {
    key: 'statusUpdateIntervalSeconds',
    env: 'LVP_STATUS_UPDATE_INTERVAL_SECONDS',
    flag: 'status-update-interval-seconds',
    kind: 'number',
    default: 5,
    min: 0.1,
    max: 300,
    description:
      "Progress is written to an object's status at most once per interval, plus once per stage change",
  },
  {
    key: 'cacheDir',
    env: 'LVP_CACHE_DIR',
    flag: 'cache-dir',
    kind: 'path',
    default: '/var/lib/libvirt-volume-provisioner/cache',
    description: 'Node-local image cache',
  },
  {
    key: 'cacheMaxBytes',
    env: 'LVP_CACHE_MAX_BYTES',
    flag: 'cache-max-bytes',
    kind: 'quantity',
    description:
      'Size limit of the image cache, as a quantity (e.g. 200Gi); least recently used images not in use are evicted to fit. Unset: unbounded',
  },
  {
    key: 'cacheMaxAgeHours',
    env: 'LVP_CACHE_MAX_AGE_HOURS',
    flag: 'cache-max-age-hours',
    kind: 'number',
    min: 0.01,
    max: 87_600,
    description: 'Images cached longer ago than this are downloaded again. Unset: no age limit',
  },
  {
    key: 'stateDir',
    env: 'LVP_STATE_DIR',
    flag: 'state-dir',
    kind: 'path',
    default: '/var/lib/libvirt-volume-provisioner/state',
    description: 'Node-local records of what the controller made (e.g. file target ownership)',
  },
  {
    key: 'fileTargetDir',
    env: 'LVP_FILE_TARGET_DIR',
    flag: 'file-target-dir',
    kind: 'path',
    default: '/var/lib/libvirt/images',
    description: 'Folder that `file` targets are written into (a libvirt dir pool)',
  },
  {
    key: 'defaultVolumeGroup',
    env: 'LVP_DEFAULT_VOLUME_GROUP',
    flag: 'default-volume-group',
    kind: 'string',
    description: 'Volume group for `lvm` targets that name none',
  },
  {
    key: 'lvmCommandPrefix',
    env: 'LVP_LVM_COMMAND_PREFIX',
    flag: 'lvm-command-prefix',
    kind: 'string',
    description:
      'Words put before every lvm call, e.g. "nsenter --target 1 --mount --uts --ipc --net --pid --" to use the host\'s LVM from a container',
  },
  {
    key: 'libvirtUri',
    env: 'LVP_LIBVIRT_URI',
    flag: 'libvirt-uri',
    kind: 'string',
    default: 'qemu:///system',
    description: 'libvirt connection used to refresh spec.target.libvirtPool',
  },
  {
    key: 's3Endpoint',
    env: 'LVP_S3_ENDPOINT',
    flag: 's3-endpoint',
    kind: 'url',
    description:
      'MinIO/S3 endpoint that s3://bucket/key sources are read from, e.g. https://minio.storage:9000',
  },
  {
    key: 's3Region',
    env: 'LVP_S3_REGION',
    flag: 's3-region',
    kind: 'string',
    default: 'us-east-1',
    description: 'Region used to sign S3 requests',
  },
  {
    key: 'downloadConnections',
    env: 'LVP_DOWNLOAD_CONNECTIONS',
    flag: 'download-connections',
    kind: 'integer',
    default: 4,
    min: 1,
    max: 16,
    description:
      'Range requests of 4 MiB that one download keeps in flight at once (1: one request per object); each can hold 4 MiB in memory. Only once the first 16 MiB show that one connection delivers slower than the download writes',
  },
  {
    key: 'convertWhileDownloading',
    env: 'LVP_CONVERT_WHILE_DOWNLOADING',
    flag: 'convert-while-downloading',
    kind: 'string',
    default: 'auto',
    oneOf: ['auto', 'qemu', 'never'],
    description:
      "auto: a qcow2 image is decoded into a file target as it downloads, and converted into an LV while it downloads (over NBD from the partial file) when its download runs slower than a quarter of the node's measured conversion rate (after its first 32 MiB); qemu: only qemu-img reads qcow2 images, into either kind of target over NBD as auto does for LVs; never: always after the download. Raw images are written into the target as they download in every mode",
  },
  {
    key: 'logLevel',
    env: 'LOG_LEVEL',
    flag: 'log-level',
    kind: 'string',
    default: 'info',
    oneOf: ['trace', 'debug', 'info', 'warn', 'error', 'fatal'],
    description: 'Lowest level written to the log',
  },
  {
    key: 'shutdownTimeoutSeconds',
    env: 'LVP_SHUTDOWN_TIMEOUT_SECONDS',
    flag: 'shutdown-timeout-seconds',
    kind: 'number',
    default: 20,
    min: 1,
    max: 3600,
    description:
      "On SIGTERM, how long running jobs get to stop; keep it below the pod's terminationGracePeriodSeconds",
  },
  {
    key: 'workers',
    env: 'LVP_WORKERS',
    flag: 'workers',
    kind: 'integer',
    default: 4,
    min: 1,
    max: 64,
    description: 'Reconciles that run at once (jobs run apart from them, under maxConcurrentJobs)',
  },
  {
    key: 'logFormat',
    env: 'LOG_FORMAT',
    flag: 'log-format',
    kind: 'string',
    default: 'json',
    oneOf: ['json', 'text'],
    description:
      'json: one JSON object per line; text: `<time> [LEVEL] <component>: <message> (key=value, ...)`',
  },
  {
    key: 'serverPort',
    env: 'LVP_SERVER_PORT',
    flag: 'server-port',
    kind: 'integer',
    default: 8080,
    min: 1,
    max: 65535,
    description: 'Port of the HTTP(S) server with /health, /healthz, /livez, /readyz and /metrics',
  },
  {
    key: 'serverAddress',
    env: 'LVP_SERVER_ADDRESS',
    flag: 'server-address',
    kind: 'string',
    default: '0.0.0.0',
    description: 'Address the server listens on',
  },
  {
    key: 'tlsCertFile',
    env: 'LVP_TLS_CERT_FILE',
    flag: 'tls-cert-file',
    kind: 'path',
    description: 'PEM certificate (chain) of the server; with tlsKeyFile the server speaks HTTPS only',
  },
  {
    key: 'tlsKeyFile',
    env: 'LVP_TLS_KEY_FILE',
    flag: 'tls-key-file',
    kind: 'path',
    description: "PEM private key of the server's certificate",
  },
  {
    key: 'tlsClientCaFile',
    env: 'LVP_TLS_CLIENT_CA_FILE',
    flag: 'tls-client-ca-file',
    kind: 'path',
    description: 'PEM CA bundle; when set, clients must present a certificate it signed (mTLS)',
  },
  {
    key: 'metricsAuth',
    env: 'LVP_METRICS_AUTH',
    flag: 'metrics-auth',
    kind: 'string',
    default: 'none',
    oneOf: ['none', 'token', 'kubernetes'],
    description:
      'Bearer token check on /metrics: none; token (equal to metricsTokenFile); kubernetes (TokenReview, then a SubjectAccessReview for GET /metrics)',
  },
  {
    key: 'metricsTokenFile',
    env: 'LVP_METRICS_TOKEN_FILE',
    flag: 'metrics-token-file',
    kind: 'path',
    description: 'File holding the static bearer token for metricsAuth=token (e.g. a mounted Secret)',
  },
  {
    key: 'otlpEndpoint',
    env: 'OTEL_EXPORTER_OTLP_ENDPOINT',
    flag: 'otlp-endpoint',
    kind: 'url',
    description:
      'OTLP/gRPC endpoint traces are sent to, e.g. http://otel-collector:4317; tracing is off when unset',
  },
  {
    key: 'otelServiceName',
    env: 'OTEL_SERVICE_NAME',
    flag: 'otel-service-name',
    kind: 'string',
    default: 'libvirt-volume-provisioner',
    description: 'service.name of the exported traces',
  },
  {
    key: 'dependencyProbeIntervalSeconds',
    env: 'LVP_DEPENDENCY_PROBE_INTERVAL_SECONDS',
    flag: 'dependency-probe-interval-seconds',
    kind: 'number',
    default: 30,
    min: 1,
    max: 3600,
    description: 'How often minio, lvm, libvirt and storage are probed for the dependencies_up metric',
  },
];

const REQUIRED: readonly (keyof Config)[] = ['nodeName'];

export class ConfigError extends Error {
  override name = 'ConfigError';
}

function convert(setting: Setting, raw: unknown, source: string): string | number {
  const where = `${setting.key} (${source})`;
  const text = typeof raw === 'string' ? raw.trim() : raw;
  switch (setting.kind) {
    case 'quantity': {
      try {
        return parseQuantity(typeof text === 'number' || typeof text === 'string' ? text : String(text));
      } catch (error) {
        throw new ConfigError(`${where} must be a quantity such as 200Gi: ${(error as Error).message}`);
      }
    }
    case 'integer':
    case 'number': {
      const value = typeof text === 'number' ? text : Number(text);
      if (typeof text === 'string' && text === '')
        throw new ConfigError(`${where} must be a number, got an empty value`);
      if (!Number.isFinite(value) || (setting.kind === 'integer' && !Number.isInteger(value))) {
        throw new ConfigError(
          `${where} must be ${setting.kind === 'integer' ? 'an integer' : 'a number'}, got ${JSON.stringify(raw)}`,
        );
      }
      if (
        (setting.min !== undefined && value < setting.min) ||
        (setting.max !== undefined && value > setting.max)
      ) {
        throw new ConfigError(`${where} must be between ${setting.min} and ${setting.max}, got ${value}`);
      }
      return value;
    }
    default: {
      if (typeof text !== 'string' || text === '')
        throw new ConfigError(`${where} must be a non-empty string`);
      if (setting.oneOf && !setting.oneOf.includes(text)) {
        throw new ConfigError(
          `${where} must be one of ${setting.oneOf.join(', ')}, got ${JSON.stringify(text)}`,
        );
      }
      if (setting.kind === 'url' && !/^https?:\/\/[^/\s]+/.test(text)) {
        throw new ConfigError(`${where} must be an http:// or https:// URL, got ${JSON.stringify(text)}`);
      }
      if (setting.kind === 'path' && !text.startsWith('/')) {
        throw new ConfigError(`${where} must be an absolute path, got ${JSON.stringify(text)}`);
      }
      return text;
    }
  }
}

function readFile(path: string): Record<string, unknown> {
  let parsed: unknown;
  try {
    parsed = yaml.load(readFileSync(path, 'utf8'));
  } catch (error) {
    throw new ConfigError(
      `cannot read config file ${path}: ${error instanceof Error ? error.message : error}`,
    );
  }
  if (parsed === undefined || parsed === null) return {};
  if (typeof parsed !== 'object' || Array.isArray(parsed))
    throw new ConfigError(`config file ${path} must hold a YAML mapping`);
  const known = new Set<string>(SETTINGS.map((setting) => setting.key));
  const unknown = Object.keys(parsed).filter((key) => !known.has(key));
  if (unknown.length > 0) {
    throw new ConfigError(
      `config file ${path} has unknown settings: ${unknown.join(', ')} (known: ${[...known].join(', ')})`,
    );
  }
  return parsed as Record<string, unknown>;
}

/** Builds the configuration or throws a ConfigError naming the setting and where it came from. */
export function loadConfig(argv: readonly string[], env: NodeJS.ProcessEnv): Config {
  let flags: Record<string, string | undefined>;
  try {
    flags = parseArgs({
      args: [...argv],
      options: Object.fromEntries([
        ['config', { type: 'string' }],
        ...SETTINGS.map((setting) => [setting.flag, { type: 'string' }]),
      ]),
      strict: true,
      allowPositionals: false,
    }).values as Record<string, string | undefined>;
  } catch (error) {
    throw new ConfigError(`${error instanceof Error ? error.message : error}; see docs/configuration.md`);
  }
  const configPath = flags.config ?? env.LVP_CONFIG;
  const file = configPath ? readFile(configPath) : {};
  const values: Record<string, string | number> = {};
  for (const setting of SETTINGS) {
    const flag = flags[setting.flag];
    const fromEnv = env[setting.env];
    if (flag !== undefined) values[setting.key] = convert(setting, flag, `flag --${setting.flag}`);
    else if (fromEnv !== undefined && fromEnv !== '')
      values[setting.key] = convert(setting, fromEnv, `env ${setting.env}`);
    else if (file[setting.key] !== undefined)
      values[setting.key] = convert(setting, file[setting.key], `file ${configPath}`);
    else if (setting.default !== undefined) values[setting.key] = setting.default;
  }
  for (const key of REQUIRED) {
    if (values[key] === undefined) {
      const setting = SETTINGS.find((candidate) => candidate.key === key) as Setting;
      throw new ConfigError(
        `${key} is required: set env ${setting.env} (from the downward API in the DaemonSet), flag --${setting.flag}, or ${key} in the config file`,
      );
    }
  }
  checkCombinations(values);
  return values as unknown as Config;
}

/** Settings that only make sense together. */
function checkCombinations(values: Record<string, string | number>): void {
  if ((values.tlsCertFile === undefined) !== (values.tlsKeyFile === undefined))
    throw new ConfigError('tlsCertFile and tlsKeyFile must be set together (or neither, for plain HTTP)');
  if (values.tlsClientCaFile !== undefined && values.tlsCertFile === undefined)
    throw new ConfigError('tlsClientCaFile (mTLS) needs TLS: set tlsCertFile and tlsKeyFile too');
  if (values.metricsAuth === 'token' && values.metricsTokenFile === undefined)
    throw new ConfigError('metricsAuth=token needs metricsTokenFile, the file holding the token');
}
