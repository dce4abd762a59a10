// AVA's configuration (here rather than in package.json: only a config file can order the test files).

/**
 * The slowest test files, slowest first (wall seconds on the 2-core CI machine, from `ava --verbose`
 * timings). They start first, so that the run does not end with one long file on one core while the
 * other idles: the suite is CPU-bound and CI has 20 minutes.
 */
const SLOW = [
  'cascade-onnx', 'cluster', 'cascade', 'cli', 'eagle-level', 'cli-bench', 'webgpu', 'chaos', 'quantize',
  'redis-cluster', 'cluster-inprocess', 'async-drafting', 'nats-partition', 'batching', 'deploy', 'security', 'invariant', 'lost-job',
];
const rank = (file) => {
  const name = file.split('/').pop().replace(/\.test\.ts$/, '');
  const i = SLOW.indexOf(name);
  return i < 0 ? SLOW.length : i;
};

export default {
  files: ['test/**/*.test.ts'],
  extensions: { ts: 'module' },
  nodeArguments: ['--import=tsx'],
  workerThreads: false,
  timeout: '10m',
  concurrency: 2,
  sortTestFiles: (a, b) => rank(a) - rank(b) || a.localeCompare(b),
};
