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

export async function makeServerCertificate(
  dir: string,
  options: { commonName: string; dnsNames?: readonly string[] },
): Promise<ServerCertificate> {
  const openssl = systemTool('openssl');
  const file = (name: string) => join(dir, name);
  const days = '3650';
  await run(openssl, [
    'req',
    '-x509',
    '-newkey',
    'rsa:2048',
    '-nodes',
    '-days',
    days,
    '-subj',
    '/CN=lvp-rig-ca',
    '-keyout',
    file('ca.key'),
    '-out',
    file('ca.crt'),
  ]);
  await run(openssl, [
    'req',
    '-newkey',
    'rsa:2048',
    '-nodes',
    '-subj',
    `/CN=${options.commonName}`,
    '-keyout',
    file('server.key'),
    '-out',
    file('server.csr'),
  ]);
  const sans = ['IP:127.0.0.1', 'DNS:localhost', ...(options.dnsNames ?? []).map((name) => `DNS:${name}`)];
  writeFileSync(file('san.ext'), `subjectAltName=${sans.join(',')}\n`);
  await run(openssl, [
    'x509',
    '-req',
    '-in',
    file('server.csr'),
    '-CA',
    file('ca.crt'),
    '-CAkey',
    file('ca.key'),
    '-CAcreateserial',
    '-days',
    days,
    '-extfile',
    file('san.ext'),
    '-out',
    file('server.crt'),
  ]);
  return { ca: file('ca.crt'), cert: file('server.crt'), key: file('server.key') };
}
