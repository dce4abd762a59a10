import test from 'ava';
import { generateAutoregressive } from '../src/engine/generate.ts';
import { argmax, GREEDY } from '../src/kernels/sampling.ts';
import { OrtModelSession } from '../src/models/ort-session.ts';
import { TextTokenizer } from '../src/models/tokenizer.ts';
import { dirOf, family } from './helpers/family.ts';

const model = await OrtModelSession.open(dirOf(family.target));
const tok = TextTokenizer.load(model.spec.tokenizerPath);
test.after.always(() => model.close());

test('generate - greedy decoding with the KV cache equals greedy by full recomputation', async (t) => {
  const prompt = tok.encode('def read_config(path):\n    """Read a configuration file');
  const result = await generateAutoregressive(model, { promptIds: prompt, maxTokens: 24, sampling: GREEDY, seed: 0, stopAtEos: false });
  const ids = [...prompt];
  for (let i = 0; i < 24; i++) {
    const logits = await model.forward({ seqId: `full-${i}`, inputIds: ids }, 'last');
    await model.release(`full-${i}`);
    ids.push(argmax(logits));
  }
  t.deepEqual(result.tokenIds, ids.slice(prompt.length));
  t.is(result.stats.generatedTokens, 24);
  t.is(result.finishReason, 'length');
});

test('generate - seeded sampling is reproducible; other seeds differ', async (t) => {
  const req = { promptIds: tok.encode('The module provides'), maxTokens: 32, sampling: { temperature: 1, topK: 0, topP: 0.95 }, seed: 5, stopAtEos: false };
  const a = await generateAutoregressive(model, req);
  const b = await generateAutoregressive(model, req);
  const c = await generateAutoregressive(model, { ...req, seed: 6 });
  t.deepEqual(a.tokenIds, b.tokenIds);
  t.notDeepEqual(a.tokenIds, c.tokenIds);
});

test('generate - tokens stream as they are produced, and the sequence is released', async (t) => {
  const streamed: number[] = [];
  const r = await generateAutoregressive(model, { promptIds: tok.encode('import os'), maxTokens: 8, sampling: GREEDY, seed: 0 }, (ids) => streamed.push(...ids));
  t.deepEqual(streamed, r.tokenIds);
});

test('generate - impossible requests are refused with the reason', async (t) => {
  const base = { promptIds: [1, 2], maxTokens: 4, sampling: GREEDY, seed: 0 };
  await t.throwsAsync(generateAutoregressive(model, { ...base, promptIds: [] }), { name: 'InvalidArgumentError', message: /prompt is empty/ });
  await t.throwsAsync(generateAutoregressive(model, { ...base, maxTokens: 0 }), { name: 'InvalidArgumentError', message: /max tokens/ });
  await t.throwsAsync(generateAutoregressive(model, { ...base, sampling: { temperature: 1, topK: 0, topP: 2 } }), { message: /top-p/ });
  await t.throwsAsync(generateAutoregressive(model, { ...base, maxTokens: 100000 }), { message: /exceeds the model's context/ });
});
