import { cpSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import test from 'ava';
import { findPython } from '../src/cli/quantize.ts';
import { generateAutoregressive } from '../src/engine/generate.ts';
import { GREEDY } from '../src/kernels/sampling.ts';
import { graphOpTypes } from '../src/models/graph-ops.ts';
import { OrtModelSession } from '../src/models/ort-session.ts';
import { cascade, fails, run } from './helpers/cli.ts';
import { maxAbsDiff, MODELS_DIR } from './helpers/family.ts';

/**
 * tools/train/fuse.py on a user's own Llama export (transformers' LlamaForCausalLM through torch.onnx,
 * the Optimum "decoder with past" layout: module names under a wrapper prefix, an untied lm_head, GQA,
 * RMSNorm weights stored once), in float32 and float16, against the export itself through the runner.
 */
const python = (() => {
  try {
    return findPython();
  } catch (err) {
    console.warn(`test/fuse-user-export.test.ts skipped: ${(err as Error).message}`);
    return undefined;
  }
})();
const maybe = python ? test : test.skip;
const FUSE = new URL('../tools/train/fuse.py', import.meta.url).pathname;
const HF = new URL('./fixtures/hf/', import.meta.url).pathname;
const TOKENIZER = join(MODELS_DIR, 'tokenizer.json');
const tmp = mkdtempSync(join(tmpdir(), 'cascade-fuse-'));
test.after.always(() => rmSync(tmp, { recursive: true, force: true }));

/** fuse.py's exit code and stderr (0 and '' when it fused). */
async function fuse(model: string, out: string): Promise<{ code: number; stderr: string }> {
  try {
    await run(python!, [FUSE, '--model', model, '--out', out]);
    return { code: 0, stderr: '' };
  } catch (err) {
    const e = err as { code?: number; stderr?: string };
    return { code: e.code ?? -1, stderr: e.stderr ?? '' };
  }
}

/**
 * Variants of the float32 export that transformers would write for other Llama-family models, made
 * by editing its graph (python): `bias` adds q, k and v biases as Qwen2 has them (an Add after each
 * projection, as torch.onnx writes a Linear with a bias); `rope` replaces the RoPE frequencies with
 * Llama 3's scaled ones (factor 8 over an original context of 256, so the fixture's 8 frequencies fall
 * in all three of its bands) and scales cos and sin by 1.25, as yarn's attention factor does. The
 * edited export is the oracle: fuse.py must read what its graph computes.
 */
const VARIANT = String.raw`
import json, shutil, sys
import numpy as np, onnx
from onnx import helper, numpy_helper
src, out, kind = sys.argv[1:4]
shutil.copytree(src, out)
model = onnx.load(out + "/model.onnx")
g = model.graph
nodes = {o: n for n in g.node for o in n.output}
rng = np.random.default_rng(7)
cfg_edit = {}

def after(output, op, name, const):
    """A node op(output, const) named name, between output's producer (or the graph input) and every
    node or graph output that read it: the new node takes over the name."""
    c = numpy_helper.from_array(np.array(const, dtype=np.float32), name + "/c")
    g.initializer.append(c)
    pre = output + "_pre"
    producer = [n for n in g.node if output in n.output]
    if producer:
        producer[0].output[:] = [pre if x == output else x for x in producer[0].output]
    else:  # a graph input: its readers move to the new node's output
        for m in g.node:
            m.input[:] = [pre if x == output else x for x in m.input]
        pre, output = output, pre
    g.node.append(helper.make_node(op, [pre, c.name] if op != "Identity" else [pre], [output], name=name))

if kind == "posdiv":  # transformers 4.38-4.44's linear scaling: positions divided before the frequencies
    matmul = [n for n in g.node if n.name.endswith("rotary_emb/MatMul")][0]
    after(matmul.input[1], "Div", "/m/model/rotary_emb/Div", 4.0)
elif kind == "embscale":  # Gemma's embedding times sqrt(hidden)
    embed = [n for n in g.node if n.name.endswith("embed_tokens/Gather")][0]
    after(embed.output[0], "Mul", "/m/model/Mul_scale", 8.0)
elif kind == "logitscale":  # Granite's logits / logits_scaling
    head = [n for n in g.node if n.name.endswith("lm_head/MatMul")][0]
    after(head.output[0], "Div", "/m/lm_head/Div", 8.0)
elif kind == "qnorm":  # Qwen3's q_norm
    q = [n for n in g.node if n.name.endswith("layers.0/self_attn/q_proj/MatMul")][0]
    after(q.output[0], "Identity", "/m/model/layers.0/self_attn/q_norm/Identity", 0.0)
elif kind == "headcast":  # an untied head whose weight reaches the MatMul through a Cast
    head = [n for n in g.node if n.name.endswith("lm_head/MatMul")][0]
    g.node.append(helper.make_node("Cast", [head.input[1]], [head.input[1] + "_cast"], name="/m/lm_head/Cast", to=1))
    head.input[1] = head.input[1] + "_cast"
elif kind == "bias":
    for n in list(g.node):
        if n.op_type == "MatMul" and n.name.split("/")[-2] in ("q_proj", "k_proj", "v_proj"):
            width = [i for i in g.initializer if i.name == n.input[1]][0].dims[1]
            bias = numpy_helper.from_array((rng.standard_normal(width) * 0.5).astype(np.float32), n.name[:-len("MatMul")] + "bias")
            g.initializer.append(bias)
            old, new = n.output[0], n.output[0] + "_biased"
            for m in g.node:
                m.input[:] = [new if x == old else x for x in m.input]
            g.node.append(helper.make_node("Add", [old, bias.name], [new], name=n.name[:-len("MatMul")] + "Add"))
    cfg_edit = {"model_type": "qwen2"}
elif kind == "rope":
    matmul = [n for n in g.node if n.name.endswith("rotary_emb/MatMul")][0]
    name = matmul.input[0]
    while nodes[name].op_type != "Constant":
        name = nodes[name].input[0]
    const = nodes[name]
    inv = numpy_helper.to_array(const.attribute[0].t)
    f = inv.astype(np.float64).ravel()
    factor, low, high, old_ctx = 8.0, 1.0, 4.0, 256.0
    wavelen = 2 * np.pi / f
    scaled = np.where(wavelen > old_ctx / low, f / factor, f)
    smooth = (old_ctx / wavelen - low) / (high - low)
    medium = ~(wavelen < old_ctx / high) & ~(wavelen > old_ctx / low)
    scaled = np.where(medium, (1 - smooth) * scaled / factor + smooth * scaled, scaled)
    const.attribute[0].t.CopyFrom(numpy_helper.from_array(scaled.astype(inv.dtype).reshape(inv.shape), const.attribute[0].t.name))
    for n in g.node:
        if n.op_type == "Mul" and n.name.split("/")[-2] == "rotary_emb" and n.input[0] in nodes and nodes[n.input[0]].op_type in ("Cos", "Sin"):
            c = nodes[n.input[1]]
            c.attribute[0].t.CopyFrom(numpy_helper.from_array(np.array(1.25, dtype=np.float32), c.attribute[0].t.name))
            if nodes[n.input[0]].op_type == "Cos":  # the constant first, as another export may write it
                n.input[:] = [n.input[1], n.input[0]]
    cfg_edit = {"rope_parameters": {"rope_type": "llama3", "rope_theta": 10000.0, "factor": factor, "low_freq_factor": low, "high_freq_factor": high, "original_max_position_embeddings": int(old_ctx)}}
# appended nodes go where their inputs are ready (ONNX wants a graph in topological order)
ready = {i.name for i in g.input} | {i.name for i in g.initializer} | {""}
ordered, pending = [], list(g.node)
while pending:
    rest = [n for n in pending if not all(x in ready for x in n.input)]
    for n in pending:
        if n not in rest:
            ordered.append(n)
            ready.update(n.output)
    assert len(rest) < len(pending), "a cycle"
    pending = rest
del g.node[:]
g.node.extend(ordered)
onnx.save(model, out + "/model.onnx")
cfg = json.load(open(out + "/config.json"))
cfg.update(cfg_edit)
json.dump(cfg, open(out + "/config.json", "w"))
`;

/** A graph shaped like Optimum's merged decoder at its top: one If on use_cache_branch (empty branches). */
const MERGED_STANDIN = String.raw`
import sys
import onnx
from onnx import TensorProto, helper
branch = lambda name: helper.make_graph([helper.make_node("Identity", ["x"], ["y_" + name])], name, [], [helper.make_tensor_value_info("y_" + name, TensorProto.FLOAT, [1])])
x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])
flag = helper.make_tensor_value_info("use_cache_branch", TensorProto.BOOL, [1])
out = helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1])
node = helper.make_node("If", ["use_cache_branch"], ["logits"], name="optimum::if", then_branch=branch("then"), else_branch=branch("else"))
onnx.save(helper.make_model(helper.make_graph([node], "merged", [x, flag], [out]), opset_imports=[helper.make_opsetid("", 17)]), sys.argv[1])
`;

/** Measured: 2.4e-7 (float32), 4.9e-4 (float16, whose logits are float16). */
const TOLERANCE = { 'llama-gqa': 1e-4, 'llama-gqa-fp16': 4e-3 } as const;

for (const name of ['llama-gqa', 'llama-gqa-fp16'] as const) {
  maybe(`fuse.py - a user's Llama export (${name}) fuses: logits within ${TOLERANCE[name]} of the export's through prefill, decode, verify, rollback and explicit positions; greedy equals transformers' own; the KV lives in a host buffer`, async (t) => {
    const src = join(HF, name);
    const out = join(tmp, name);
    t.deepEqual(await fuse(src, out), { code: 0, stderr: '' });
    const ops = graphOpTypes(join(out, 'model.onnx'));
    for (const op of ['GroupQueryAttention', 'RotaryEmbedding', 'SkipSimplifiedLayerNormalization']) t.true(ops.has(op), op);
    t.false(ops.has('Softmax'));
    t.truthy(readFileSync(join(out, 'generation_config.json')), 'the folder\'s other files come along');
    const ref = JSON.parse(readFileSync(join(src, 'reference.json'), 'utf8')) as { prompt_ids: number[]; greedy_ids: number[] };
    const [unfused, fused] = await Promise.all([OrtModelSession.open({ dir: src, tokenizer: TOKENIZER }), OrtModelSession.open({ dir: out, tokenizer: TOKENIZER })]);
    try {
      t.is(fused.kvLocation, 'host-buffer');
      t.is(fused.kvDtype, unfused.kvDtype);
      let worst = 0;
      const both = async (seqId: string, inputIds: number[], extra: { keep?: number; positionIds?: number[] } = {}) => {
        const [a, b] = await Promise.all([unfused.forward({ seqId, inputIds, ...extra }), fused.forward({ seqId, inputIds, ...extra })]);
        worst = Math.max(worst, maxAbsDiff(a, b));
      };
      await both('s', ref.prompt_ids);
      for (const id of [40, 41, 42]) await both('s', [id]);
      await both('s', [43, 44, 45, 46, 47]);
      await both('s', [48, 49, 50], { keep: ref.prompt_ids.length + 4 });
      await both('p', ref.prompt_ids.slice(0, 6), { positionIds: [0, 1, 2, 3, 4, 5] });
      await both('p', [60, 61], { positionIds: [20, 21] });
      t.true(worst < TOLERANCE[name], `max abs diff ${worst}`);
      t.log(`${name}: max abs logit difference, fused vs the export: ${worst.toExponential(2)}`);
      const req = { promptIds: ref.prompt_ids, maxTokens: ref.greedy_ids.length, sampling: GREEDY, seed: 0, stopAtEos: false };
      t.deepEqual((await generateAutoregressive(fused, req)).tokenIds, ref.greedy_ids);
    } finally {
      await Promise.all([unfused.close(), fused.close()]);
    }
  });
}

maybe('fuse.py - refuses, naming why, what its plain Llama layers do not compute (biases the graph lacks, GELU, another model type, a sliding window inside the positions), a merged decoder, a folder without the graph, and writing over the model', async (t) => {
  const variant = (name: string, edit: (cfg: Record<string, unknown>) => void): string => {
    const dir = join(tmp, name);
    cpSync(join(HF, 'llama-gqa'), dir, { recursive: true });
    const cfg = JSON.parse(readFileSync(join(dir, 'config.json'), 'utf8')) as Record<string, unknown>;
    edit(cfg);
    writeFileSync(join(dir, 'config.json'), JSON.stringify(cfg));
    return dir;
  };
  const cases: [string, RegExp][] = [
    [variant('bias', (c) => (c.attention_bias = true)), /config.json gives the projections biases, and no Add beside a projection's MatMul holds one/],
    [variant('gelu', (c) => (c.hidden_act = 'gelu')), /hidden_act 'gelu' \(the fused MLP is SiLU-gated\)/],
    // Granite scales embeddings, attention, residuals and logits: Llama-shaped weights, other arithmetic
    [variant('granite', (c) => (c.model_type = 'granite')), /model_type 'granite' \(fuse.py knows llama, mistral, qwen2 layers/],
    [variant('window', (c) => (c.sliding_window = 128)), /sliding_window 128 \(under the 512 positions; with --max-positions 128 or less the window never applies\)/],
    [variant('longrope', (c) => (c.rope_parameters = { rope_type: 'longrope', rope_theta: 10000 })), /RoPE type 'longrope' \(its frequencies change with the sequence's length\)/],
    [variant('qwen-unbiased', (c) => (c.model_type = 'qwen2')), /a Qwen2 model's q, k and v projections have biases, and none was found/],
  ];
  for (const [dir, reason] of cases) {
    const r = await fuse(dir, join(dir, 'fused'));
    t.not(r.code, 0, dir);
    t.regex(r.stderr, reason);
  }
  // Qwen2 names a window and switches it off; one past every position never applies, nor one the positions are cut to
  t.deepEqual(await run(python!, [FUSE, '--model', variant('window-cut', (c) => (c.sliding_window = 128)), '--out', join(tmp, 'window-cut-fused'), '--max-positions', '128']).then(() => 0), 0);
  for (const [name, edit] of [['off', (c: Record<string, unknown>) => Object.assign(c, { sliding_window: 128, use_sliding_window: false })], ['long', (c: Record<string, unknown>) => (c.sliding_window = 4096)]] as const) {
    const dir = variant(`window-${name}`, edit);
    t.deepEqual(await fuse(dir, join(dir, 'fused')), { code: 0, stderr: '' }, name);
  }
  // a merged decoder: its layers inside an If on use_cache_branch (a stand-in graph: the If is what is read)
  const merged = join(tmp, 'merged');
  cpSync(join(HF, 'llama-gqa', 'config.json'), join(merged, 'config.json'));
  await run(python!, ['-c', MERGED_STANDIN, join(merged, 'model.onnx')]);
  t.regex((await fuse(merged, join(tmp, 'merged-fused'))).stderr, /its layers sit inside optimum::if \(a merged decoder, which branches on use_cache_branch\)/);
  const empty = join(tmp, 'empty');
  cpSync(join(HF, 'llama-gqa', 'config.json'), join(empty, 'config.json'));
  t.regex((await fuse(empty, join(tmp, 'x'))).stderr, /needs config.json and model.onnx/);
  const src = join(HF, 'llama-gqa');
  t.regex((await fuse(src, src)).stderr, /is the model's own folder/);
});

maybe('cascade fuse - fuses a user\'s export into a new folder and prints it; refuses an existing --out and a fused --model (exit 2) and passes fuse.py\'s refusal on (exit 1)', async (t) => {
  const out = join(tmp, 'via-cli');
  const { stdout } = await cascade('fuse', '--model', join(HF, 'llama-gqa'), '--out', out);
  t.regex(stdout, /fused .*llama-gqa -> .*via-cli: 44 nodes/);
  t.is(stdout.trim().split('\n').at(-1), out);
  t.true(graphOpTypes(join(out, 'model.onnx')).has('GroupQueryAttention'));
  // --no-logits-to-keep: the graph without the num_logits_to_keep input (for runtimes that do not feed it), the same logits
  const allRows = join(tmp, 'via-cli-all-rows');
  t.regex((await cascade('fuse', '--model', join(HF, 'llama-gqa'), '--out', allRows, '--no-logits-to-keep')).stdout, /via-cli-all-rows: 41 nodes/);
  const tokenizer = join(MODELS_DIR, 'tokenizer.json'); // the fixture carries none; the ids below are all the test feeds
  const [kept, every] = await Promise.all([OrtModelSession.open({ dir: out, tokenizer }), OrtModelSession.open({ dir: allRows, tokenizer })]);
  try {
    const ids = [1, 5, 9, 14, 3, 27];
    t.true(maxAbsDiff(await kept.forward({ seqId: 's', inputIds: ids }, 'last'), await every.forward({ seqId: 's', inputIds: ids }, 'last')) < 1e-5);
  } finally {
    await Promise.all([kept.close(), every.close()]);
  }
  const missing = await fails(['fuse', '--model', '--out', join(tmp, 'never')]);
  t.is(missing.code, 2);
  t.regex(missing.stderr, /--model needs a folder, got "--out"/);
  const again = await fails(['fuse', '--model', join(HF, 'llama-gqa'), '--out', out]);
  t.is(again.code, 2);
  t.regex(again.stderr, /--out .*via-cli exists: name a new folder for the fused model/);
  // a fused folder fused again: named as such (fuse.py would only find no projections in it)
  const twice = await fails(['fuse', '--model', out, '--out', join(tmp, 'fused-twice')]);
  t.is(twice.code, 2);
  t.regex(twice.stderr, /--model .*via-cli is already fused \(its config\.json says onnx_graph\.form "fused", made from .*llama-gqa.*\): use it as it is, or fuse the export it was made from/);
  const biased = join(tmp, 'biased');
  cpSync(join(HF, 'llama-gqa'), biased, { recursive: true });
  const cfg = JSON.parse(readFileSync(join(biased, 'config.json'), 'utf8')) as Record<string, unknown>;
  writeFileSync(join(biased, 'config.json'), JSON.stringify({ ...cfg, attention_bias: true }));
  const refused = await fails(['fuse', '--model', biased, '--out', join(tmp, 'biased-fused')]);
  t.is(refused.code, 1);
  t.regex(refused.stderr, /config.json gives the projections biases, and no Add beside a projection's MatMul holds one[\s\S]*tools\/train\/fuse.py failed \(exit 1\)/);
});

for (const kind of ['bias', 'rope'] as const) {
  maybe(`fuse.py - ${kind === 'bias' ? 'Qwen2-style q, k and v biases' : "Llama 3's scaled RoPE and a scaled cos/sin (yarn's attention factor)"}, read from the export's graph: logits within 1e-4 of the edited export's, and its greedy tokens`, async (t) => {
    const src = join(tmp, `variant-${kind}`);
    await run(python!, ['-c', VARIANT, join(HF, 'llama-gqa'), src, kind]);
    const out = join(tmp, `variant-${kind}-fused`);
    t.deepEqual(await fuse(src, out), { code: 0, stderr: '' });
    if (kind === 'bias') t.true(graphOpTypes(join(out, 'model.onnx')).has('Add'), 'the packed biases');
    const ref = JSON.parse(readFileSync(join(src, 'reference.json'), 'utf8')) as { prompt_ids: number[]; greedy_ids: number[] };
    const [unfused, fused] = await Promise.all([OrtModelSession.open({ dir: src, tokenizer: TOKENIZER }), OrtModelSession.open({ dir: out, tokenizer: TOKENIZER })]);
    try {
      let worst = 0;
      const both = async (seqId: string, inputIds: number[], extra: { positionIds?: number[] } = {}) => {
        const [a, b] = await Promise.all([unfused.forward({ seqId, inputIds, ...extra }), fused.forward({ seqId, inputIds, ...extra })]);
        worst = Math.max(worst, maxAbsDiff(a, b));
      };
      await both('s', ref.prompt_ids);
      for (const id of [40, 41, 42]) await both('s', [id]);
      // positions far out, where Llama 3's scaling moves the low frequencies most
      await both('p', ref.prompt_ids.slice(0, 4), { positionIds: [300, 301, 302, 303] });
      t.true(worst < 1e-4, `max abs diff ${worst}`);
      t.log(`${kind}: max abs logit difference, fused vs the edited export: ${worst.toExponential(2)}`);
      const original = await OrtModelSession.open({ dir: join(HF, 'llama-gqa'), tokenizer: TOKENIZER });
      const changed = maxAbsDiff(await original.forward({ seqId: 'o', inputIds: ref.prompt_ids, positionIds: ref.prompt_ids.map((_, j) => 300 + j) }), await unfused.forward({ seqId: 'o', inputIds: ref.prompt_ids, positionIds: ref.prompt_ids.map((_, j) => 300 + j) }));
      await original.close();
      t.true(changed > 10 * Math.max(worst, 1e-4), `the edit changes what the model computes (${changed}), far more than fusing does (${worst})`);
      const req = { promptIds: ref.prompt_ids, maxTokens: 16, sampling: GREEDY, seed: 0, stopAtEos: false };
      t.deepEqual((await generateAutoregressive(fused, req)).tokenIds, (await generateAutoregressive(unfused, req)).tokenIds);
    } finally {
      await Promise.all([unfused.close(), fused.close()]);
    }
  });
}

maybe('fuse.py - refuses an export whose arithmetic around the Llama weights is not Llama\'s, rather than fusing it wrong: scaled positions, a scaled embedding, scaled logits, q/k norms, an untied head it cannot read', async (t) => {
  const cases: [string, RegExp][] = [
    ['posdiv', /the RoPE positions are changed before the frequencies multiply them \(Div\)/],
    ['embscale', /the embedding goes through \/m\/model\/Mul_scale before the first layer/],
    ['logitscale', /the logits come from \/m\/lm_head\/Div, not lm_head\/MatMul/],
    ['qnorm', /the attention norms q and k \(q_norm, k_norm\)/],
    ['headcast', /says the head is not tied to the embedding, and no initializer feeds lm_head\/MatMul/],
  ];
  for (const [kind, reason] of cases) {
    const src = join(tmp, `variant-${kind}`);
    await run(python!, ['-c', VARIANT, join(HF, 'llama-gqa'), src, kind]);
    const r = await fuse(src, join(tmp, `variant-${kind}-fused`));
    t.not(r.code, 0, kind);
    t.regex(r.stderr, reason, kind);
  }
});
