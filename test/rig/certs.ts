// A throwaway CA and a server certificate for 127.0.0.1, made with openssl, for the rig's
// TLS endpoints and for tests of TLS clients.
import { execFile } from 'node:child_process';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { systemTool } from './tools.ts';

const run = promisify(execFile);

export interface ServerCertificate {
  /** PEM paths. */
  ca: string;
  cert: string;
  key: string;
}

const DAYS = '3650';

/** A key and a certificate named `name` in `dir`, signed by the CA there, with `extensions`. */
async function issue(dir: string, name: string, commonName: string, extensions: string) {
  const openssl = systemTool('openssl');
  const file = (suffix: string) => join(dir, `${name}.${suffix}`);
  await run(openssl, [
    'req',
    '-newkey',
    'rsa:2048',
    '-nodes',
    '-subj',
    `/CN=${commonName}`,
    '-keyout',
    file('key'),
    '-out',
    file('csr'),
  ]);
  writeFileSync(file('ext'), extensions);
  await run(openssl, [
    'x509',
    '-req',
    '-in',
    file('csr'),
    '-CA',
    join(dir, 'ca.crt'),
    '-CAkey',
    join(dir, 'ca.key'),
    '-CAcreateserial',
    '-days',
    DAYS,
    '-extfile',
    file('ext'),
    '-out',
    file('crt'),
  ]);
  return { cert: file('crt'), key: file('key') };
}

/** A new CA in `dir` and a server certificate for 127.0.0.1, localhost and `dnsNames`. */
export async function makeServerCertificate(
  dir: string,
  options: { commonName: string; dnsNames?: readonly string[] },
): Promise<ServerCertificate> {
  await run(systemTool('openssl'), [
    'req',
    '-x509',
    '-newkey',
    'rsa:2048',
    '-nodes',
    '-days',
    DAYS,
    '-subj',
    '/CN=lvp-rig-ca',
    '-keyout',
    join(dir, 'ca.key'),
    '-out',
    join(dir, 'ca.crt'),
  ]);
  const sans = ['IP:127.0.0.1', 'DNS:localhost', ...(options.dnsNames ?? []).map((name) => `DNS:${name}`)];
  const server = await issue(dir, 'server', options.commonName, `subjectAltName=${sans.join(',')}\n`);
  return { ca: join(dir, 'ca.crt'), ...server };
}

/** A client certificate (mTLS) signed by the CA that makeServerCertificate left in `dir`. */
export function makeClientCertificate(
  dir: string,
  commonName: string,
): Promise<{ cert: string; key: string }> {
  return issue(dir, 'client', commonName, 'extendedKeyUsage=clientAuth\n');
}
