"""Single-op chains of the target's products for comparing ONNX Runtime's int8 kernels (docs/quantization.md,
`--scheme w8a8`): 24 products alternating [512, 1408] and [1408, 512] weights (random, 17 MB at int8), written
to DIR as nbits.onnx (MatMulNBits 8-bit, blocks of 32, accuracy_level 4), w8a8.onnx (int8 weights per column,
int8 activations per row, MatMulIntegerToFloat, as tools/train/quantize.py --scheme w8a8 writes them but
without its Max(., 1e-30) clamp of the row scale) and
dqmm.onnx (DynamicQuantizeMatMul: one activation scale for the whole pass). Time them with
tools/bench/int8-products.mjs DIR.

Usage: /usr/bin/python3 tools/bench/int8-products.py DIR
"""
import sys
from pathlib import Path
import numpy as np
import onnx
from onnx import helper as h, TensorProto as T, numpy_helper as nh
rng = np.random.default_rng(0)
L = 24
shapes = [(512, 1408) if i % 2 == 0 else (1408, 512) for i in range(L)]
Ws = [rng.standard_normal(s).astype(np.float32) / np.sqrt(s[0]) for s in shapes]
def save(make, name):
    """Chains the 24 products built by make(i, W, input, output) into DIR/name.onnx."""
    nodes, inits = [], []
    x = 'A'
    for i, W in enumerate(Ws):
        y = 'Y' if i == L - 1 else f'x{i}'
        n, ini = make(i, W, x, y); nodes += n; inits += ini; x = y
    g = h.make_graph(nodes, name, [h.make_tensor_value_info('A', T.FLOAT, ['M', 512])], [h.make_tensor_value_info('Y', T.FLOAT, ['M', 512])], inits)
    m = h.make_model(g, opset_imports=[h.make_opsetid('', 17), h.make_opsetid('com.microsoft', 1)]); m.ir_version = 8
    onnx.save(m, str(Path(sys.argv[1]) / (name + '.onnx')))

def nbits(i, W, x, y, bs=32):
    """MatMulNBits' B [N, blocks, 32] uint8 (zero point 128), scales [N * blocks]."""
    K, N = W.shape
    Wt = W.T.reshape(N, K // bs, bs); sc = np.abs(Wt).max(-1) / 127.0
    q = (np.clip(np.round(Wt / sc[..., None]), -128, 127).astype(np.int16) + 128).astype(np.uint8)
    return [h.make_node('MatMulNBits', [x, f'B{i}', f'S{i}'], [y], domain='com.microsoft', K=K, N=N, bits=8, block_size=bs, accuracy_level=4)], [nh.from_array(q, f'B{i}'), nh.from_array(sc.astype(np.float32).reshape(-1), f'S{i}')]
def quantcol(W):
    """Symmetric int8 per column of W [K, N], and the column scales."""
    cs = np.abs(W).max(0) / 127.0
    return np.clip(np.round(W / cs), -127, 127).astype(np.int8), cs.astype(np.float32)

def dqmm(i, W, x, y):
    """DynamicQuantizeMatMul: one uint8 scale and zero point for the whole of A."""
    Wq, cs = quantcol(W)
    return [h.make_node('DynamicQuantizeMatMul', [x, f'Wq{i}', f'Ws{i}'], [y], domain='com.microsoft')], [nh.from_array(Wq, f'Wq{i}'), nh.from_array(cs, f'Ws{i}')]

def w8a8(i, W, x, y):
    """Per-row int8 activations (zero point 128), per-column int8 weights: MatMulIntegerToFloat, then the row scale."""
    Wq, cs = quantcol(W)
    n = lambda op, ins, outs, **kw: h.make_node(op, ins, outs, **kw)
    nodes = [n('Abs', [x], [f'ab{i}']), n('ReduceMax', [f'ab{i}'], [f'mx{i}'], axes=[-1], keepdims=1), n('Mul', [f'mx{i}', 'inv127'], [f'rs{i}']),
             n('Div', [x, f'rs{i}'], [f'xd{i}']), n('QuantizeLinear', [f'xd{i}', 'one', 'zp128'], [f'q{i}']),
             n('MatMulIntegerToFloat', [f'q{i}', f'Wq{i}', 'one', f'Ws{i}', 'zp128'], [f'mf{i}'], domain='com.microsoft'),
             n('Mul', [f'mf{i}', f'rs{i}'], [y])]
    inits = [nh.from_array(Wq, f'Wq{i}'), nh.from_array(cs, f'Ws{i}')]
    if i == 0: inits += [nh.from_array(np.array(1/127, np.float32), 'inv127'), nh.from_array(np.array(1, np.float32), 'one'), nh.from_array(np.array(128, np.uint8), 'zp128')]
    return nodes, inits
Path(sys.argv[1]).mkdir(parents=True, exist_ok=True)
save(nbits, 'nbits')
save(w8a8, 'w8a8')
save(dqmm, 'dqmm')
