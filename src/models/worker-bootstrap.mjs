// Entry of model worker threads when the project runs from TypeScript sources: Node 20 cannot load a
// .ts worker entry even with tsx preloaded, so this plain module registers tsx and imports the worker.
import { workerData } from 'node:worker_threads';
import { register } from 'tsx/esm/api';

register();
await import(workerData.entry);
