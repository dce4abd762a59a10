#!/usr/bin/env bash
# Reproduces the bundled model family from nothing but Debian and npm packages, on the CPU:
# corpus -> tokenizer -> token streams -> train target and drafters -> export ONNX -> evaluate.
# Resumable: every training run continues from runs/NAME/ckpt.pt when it exists, so rerunning this
# script after an interruption picks up where it stopped. Outputs land in models/ (committed) and
# data/, runs/ (not committed).
#
# Usage: bash tools/train/train_family.sh            (about 80 minutes on 2 cores)
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=/usr/bin/python3   # Debian's python3 with python3-torch; its OpenBLAS build trains ~1.8x faster here than the pip wheel

if ! $PY -c "import torch, onnx, regex, numpy" 2>/dev/null || [ ! -d /usr/share/doc/python3.11/html ]; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-torch libopenblas0-pthread python3-numpy python3-onnx \
    python3-regex python3.11-doc libpython3.11-testsuite nodejs-doc
fi

$PY tools/train/corpus.py --out data/corpus
[ -f models/tokenizer.json ] || $PY tools/train/bpe.py --corpus data/corpus --vocab 8192 --out models/tokenizer.json
$PY tools/train/encode.py --corpus data/corpus --tokenizer models/tokenizer.json --out data/tokens
$PY tools/train/bigram.py --data data/tokens --vocab 8192 --out models/bigram.bin

# The target (one core) and the drafters (the other core) train side by side.
$PY tools/train/train.py --model target --tokens 3.3e6 --run runs/target --threads 1 --eval-every 200 &
target=$!
$PY tools/train/train.py --model draft-l2 --tokens 8e6 --run runs/draft-l2 --threads 1 --eval-every 250 --lr 3e-3
$PY tools/train/train.py --model draft-l1 --tokens 8e6 --run runs/draft-l1 --threads 1 --eval-every 250 --lr 4e-3
wait $target

for m in target draft-l2 draft-l1; do
  $PY tools/train/export.py --ckpt runs/$m/ckpt.pt --out models/$m --tokenizer models/tokenizer.json
done
echo '{"target": "target", "drafters": ["draft-l2", "draft-l1"], "bigram": "bigram.bin"}' > models/family.json
$PY tools/train/evaluate.py --runs runs --models models
