// A worker thread that tokenizes long texts for TokenizerThread (tokenizer-thread.ts).
import { parentPort, workerData } from 'node:worker_threads';
import { TextTokenizer } from './tokenizer.ts';

const source = (workerData as { source: TextTokenizer['source'] }).source;
const tokenizer = TextTokenizer.load(source.tokenizerPath, source.configDir, source.modelDir);
parentPort!.on('message', ({ id, text }: { id: number; text: string }) => {
  try {
    const ids = Uint32Array.from(tokenizer.encode(text));
    parentPort!.postMessage({ id, ids }, [ids.buffer]);
  } catch (err) {
    parentPort!.postMessage({ id, error: (err as Error).message });
  }
});
