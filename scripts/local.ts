// `npm run local`: a real kube-apiserver (with etcd) and MinIO on loopback, the CRDs, a
// sample image in MinIO with a Secret for it, and the controller for node "local-node"
// writing `file` targets, running with the RBAC the chart grants. Ctrl-C stops everything.
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { CoreV1Api } from '@kubernetes/client-node';
import { startKubeControlPlane } from '../test/rig/kube.ts';
import { startMinio } from '../test/rig/minio.ts';
import { goTool, projectRoot } from '../test/rig/tools.ts';
import { makeWorkDir } from '../test/rig/workdir.ts';
import {
  controllerDirs,
  controllerKubeconfig,
  installCrds,
  startController,
} from '../test/support/controller.ts';
import { makeTestImage } from '../test/support/images.ts';

const NODE = 'local-node';
const workDir = makeWorkDir('local');
const cluster = await startKubeControlPlane(join(workDir, 'kube'));
const minio = await startMinio(join(workDir, 'minio'));

await installCrds(cluster);
const image = await makeTestImage(workDir, 'sample', 96);
const qcow2 = readFileSync(image.qcow2Path);
await minio.client().makeBucket('images');
await minio.client().putObject('images', 'sample.qcow2', qcow2, qcow2.length);
await cluster
  .adminConfig()
  .makeApiClient(CoreV1Api)
  .createNamespacedSecret({
    namespace: 'default',
    body: {
      metadata: { name: 'minio-images' },
      stringData: { accessKeyId: minio.accessKey, secretKey: minio.secretKey },
    },
  });

const dirs = controllerDirs(join(workDir, 'node'));
const logFile = join(workDir, 'controller.log');
const controller = await startController({
  kubeconfig: await controllerKubeconfig(cluster),
  nodeName: NODE,
  dirs,
  logFile,
  env: { LVP_S3_ENDPOINT: minio.endpoint, LOG_LEVEL: 'info' },
});

const kubectl = goTool('kubectl');
console.log(`
The local environment is up. The controller runs for node "${NODE}" and writes file
targets into ${dirs.fileTargetDir}.

  Kubernetes API   ${cluster.server}
  MinIO            ${minio.endpoint}  (bucket "images" holds sample.qcow2; Secret default/minio-images)
  Controller log   ${logFile}
  Metrics          http://127.0.0.1:${controller.serverPort}/metrics  (health: /healthz, /readyz)

Try it in another shell:

  export KUBECONFIG=${cluster.kubeconfigPath}
  alias kubectl=${kubectl}
  kubectl apply -f ${join(projectRoot, 'examples/local/volumeprovision.yaml')}
  kubectl wait --for=condition=Ready vp/sample-disk --timeout=120s
  kubectl get vp -o wide
  curl -s http://127.0.0.1:${controller.serverPort}/metrics | grep '^libvirt_volume_provisioner_'

Press Ctrl-C to stop everything.`);
// The daemons keep this process alive; test/rig/processes.ts stops them on Ctrl-C or SIGTERM.
