#!/usr/bin/env bash
# Reproduces the bundled model family from nothing but Debian and npm packages, on the CPU:
# corpus -> tokenizer -> token streams -> train target and drafters -> export ONNX -> evaluate.
# Resumable: every training run continues from runs/NAME/ckpt.pt when it exists, so rerunning this
# script after an interruption picks up where it stopped. Outputs land in models/ (committed) and
# data/, runs/ (not committed).
#
# Usage: bash tools/train/train_family.sh            (about 3.5 hours on 2 cores)
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=/usr/bin/python3   # Debian's python3 with python3-torch (1.13, OpenBLAS): data, export, evaluation
# TRAIN_PY may name another Python for the training runs: a torch >= 2 pip wheel (MKL) trains the
# target at ~900 tokens/s on 2 threads here, against ~600 for Debian's torch 1.13 (OpenBLAS). On
# CPUs with AVX512-BF16/AMX add --bf16 to the phase-2 runs (~1370 tokens/s per core measured there);
# without those instructions bfloat16 autocast is about 3x slower than float32.
TRAIN_PY=${TRAIN_PY:-$PY}

if ! $PY -c "import torch, onnx, regex, numpy" 2>/dev/null || [ ! -d /usr/share/doc/python3.11/html ]; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-torch libopenblas0-pthread python3-numpy python3-onnx \
    python3-regex python3.11-doc libpython3.11-testsuite
fi

$PY tools/train/corpus.py --out data/corpus
[ -f models/tokenizer.json ] || $PY tools/train/bpe.py --corpus data/corpus --vocab 8192 --out models/tokenizer.json
$PY tools/train/encode.py --corpus data/corpus --tokenizer models/tokenizer.json --out data/tokens
$PY tools/train/bigram.py --data data/tokens --vocab 8192 --out models/bigram.bin

# Phase 1: the target (one core) and the drafters (the other core) train side by side. (The shipped
# phase 1 target stopped at step 766 of 805 on a time limit; resuming it finishes the schedule.)
$PY tools/train/train.py --model target --tokens 3.3e6 --run runs/target --threads 1 --eval-every 200 &
target=$!
$PY tools/train/train.py --model draft-l2 --tokens 8e6 --run runs/draft-l2 --threads 1 --eval-every 250 --lr 3e-3
$PY tools/train/train.py --model draft-l1 --tokens 8e6 --run runs/draft-l1 --threads 1 --eval-every 250 --lr 4e-3
wait $target

# Phase 2: the target continues from its phase-1 weights on fresh batches (seed 2) for 3.7M more
# tokens with a new cosine schedule, on both cores. Then draft-l2 is distilled from the finished
# target (KL to its next-token distribution plus cross-entropy), so that its greedy choices follow it.
$TRAIN_PY tools/train/train.py --model target --init runs/target/ckpt.pt --run runs/target-p2 --tokens 3.7e6 --lr 1e-3 \
  --warmup 50 --seed 2 --threads 2 --eval-every 150 --ckpt-every 20
$TRAIN_PY tools/train/train.py --model draft-l2 --init runs/draft-l2/ckpt.pt --teacher runs/target-p2/ckpt.pt \
  --run runs/draft-l2-p2 --tokens 1.0e6 --lr 1e-3 --warmup 30 --seed 3 --threads 2 --eval-every 100 --ckpt-every 25
# Its greedy agreement with the target was still below 60% on code, so a third phase distils on
# fresh batches (seed 4) with more weight on the teacher.
$TRAIN_PY tools/train/train.py --model draft-l2 --init runs/draft-l2-p2/ckpt.pt --teacher runs/target-p2/ckpt.pt \
  --run runs/draft-l2-p3 --tokens 3.5e6 --distill-weight 0.9 --lr 1e-3 --warmup 30 --seed 4 --threads 2 --eval-every 200 --ckpt-every 25

$PY tools/train/export.py --ckpt runs/target-p2/ckpt.pt --out models/target --tokenizer models/tokenizer.json
$PY tools/train/export.py --ckpt runs/draft-l2-p3/ckpt.pt --out models/draft-l2 --tokenizer models/tokenizer.json
$PY tools/train/export.py --ckpt runs/draft-l1/ckpt.pt --out models/draft-l1 --tokenizer models/tokenizer.json
# ADORE's controller, labelled by the exported target's attention (docs/adore.md).
$PY tools/train/controller.py --target models/target --out models/controller --seq 384 --windows 48 --val-windows 8 --steps 500
echo '{"target": "target", "drafters": ["draft-l2", "draft-l1"], "bigram": "bigram.bin", "controller": "controller"}' > models/family.json
$PY tools/train/evaluate.py --runs runs --models models --ckpt target=runs/target-p2/ckpt.pt --ckpt draft-l2=runs/draft-l2-p3/ckpt.pt
