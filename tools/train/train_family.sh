#!/usr/bin/env bash
# Reproduces the bundled model family from nothing but Debian and npm packages:
# corpus -> tokenizer -> token streams -> train target and drafters -> export ONNX -> controller -> evaluate.
# Resumable: every training run continues from runs/NAME/ckpt.pt when it exists, so rerunning this
# script after an interruption picks up where it stopped. Outputs land in models/ (committed) and
# data/, runs/ (not committed).
#
# Training (gpu_family.sh) takes about 6 minutes on one H100 and days on 2 CPU cores. Where the GPU is
# another machine, run gpu_family.sh there with an OUTDIR, bring OUTDIR back and give it here as FROM:
#   FROM=path/to/OUTDIR bash tools/train/train_family.sh
#
# Usage: bash tools/train/train_family.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=/usr/bin/python3   # Debian's python3 with python3-torch (1.13, OpenBLAS): data, export, evaluation
TRAIN_PY=${TRAIN_PY:-$PY}

if ! $PY -c "import torch, onnx, regex, numpy" 2>/dev/null || [ ! -d /usr/share/doc/python3.11/html ]; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-torch libopenblas0-pthread python3-numpy python3-onnx \
    python3-regex python3.11-doc libpython3.11-testsuite
fi

$PY tools/train/corpus.py --out data/corpus
[ -f models/tokenizer.json ] || $PY tools/train/bpe.py --corpus data/corpus --vocab 8192 --out models/tokenizer.json
$PY tools/train/encode.py --corpus data/corpus --tokenizer models/tokenizer.json --out data/tokens
$PY tools/train/bigram.py --data data/tokens --vocab 8192 --out models/bigram.bin --trigram-out models/trigram.bin

if [ -n "${FROM:-}" ]; then
  for n in target draft-l2 draft-l1; do $PY tools/train/pack.py unpack --dir "$FROM" --name "$n" --ckpt "runs/$n/ckpt.pt"; done
else
  DEVICE=${DEVICE:-$($TRAIN_PY -c 'import torch; print("cuda" if torch.cuda.is_available() else "cpu")')}
  DEVICE=$DEVICE PY=$TRAIN_PY bash tools/train/gpu_family.sh
fi

for n in target draft-l2 draft-l1; do
  $PY tools/train/export.py --ckpt "runs/$n/ckpt.pt" --out "models/$n" --tokenizer models/tokenizer.json
done
# ADORE's controller, labelled by the exported target's attention over 2048-token windows (docs/adore.md).
$PY tools/train/controller.py --target models/target --out models/controller --seq 2048 --windows 48 --val-windows 8 \
  --steps 600 --label-k 64 --threads 1
# no "eagle" key: models/eagle reads the features of the target it was trained on, so a new target
# needs a new feature drafter (bash tools/train/eagle.sh, which names it in family.json again)
echo '{"target": "target", "drafters": ["draft-l2", "draft-l1"], "bigram": "bigram.bin", "trigram": "trigram.bin", "controller": "controller"}' > models/family.json
[ -d models/eagle ] && echo "models/family.json no longer names models/eagle: it was trained on the previous target's features; retrain it with bash tools/train/eagle.sh" >&2
$PY tools/train/evaluate.py --runs runs --models models --seq 2048
