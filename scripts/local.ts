// Starts the local environment: a real kube-apiserver with etcd and a real MinIO on loopback,
// prints how to reach them, and stops everything on Ctrl-C or SIGTERM.
import { startKubeControlPlane } from '../test/rig/kube.ts';
import { startMinio } from '../test/rig/minio.ts';
import { goTool } from '../test/rig/tools.ts';
import { makeWorkDir } from '../test/rig/workdir.ts';

const cluster = await startKubeControlPlane(makeWorkDir('kube'));
const minio = await startMinio(makeWorkDir('minio')).catch(async (error: unknown) => {
  await cluster.stop();
  throw error;
});

console.log(`
Local environment is up (logs under ${process.env.LVP_RIG_DIR}):

  Kubernetes API  ${cluster.server}
    export KUBECONFIG=${cluster.kubeconfigPath}
    alias kubectl=${goTool('kubectl')}
  MinIO           ${minio.endpoint}
    access key ${minio.accessKey}
    secret key ${minio.secretKey}

Press Ctrl-C to stop.`);
// The daemons keep this process alive; test/rig/processes.ts stops them on Ctrl-C or SIGTERM.
