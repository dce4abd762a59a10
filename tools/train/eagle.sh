#!/usr/bin/env bash
# Retrains the EAGLE feature drafter (models/eagle, issue 24) on the CPU from the shipped target:
# target features over the train split -> train one layer -> test agreement -> ONNX export -> check
# against ONNX Runtime and time one pass beside the target's. Resumable: extraction keeps its shards
# (.cache/eagle/train), training continues from runs/eagle/ckpt.pt. Everything runs under nice 19 on
# THREADS threads (default 2). Outputs: models/eagle/ (committed), the target with its hidden_states
# output in scratch/target-hidden/ (not committed; add_hidden_output.py), .cache/ and runs/ (not committed).
#
# Debian's python3-torch calls whichever libblas.so.3 is selected; the reference BLAS makes a 23M
# model's forward 12x slower than OpenBLAS. train_family.sh installs libopenblas0-pthread; where that
# cannot be installed, set OPENBLAS_DIR to an unpacked copy (apt-get download libopenblas0-pthread;
# dpkg-deb -x ... DIR; OPENBLAS_DIR=DIR/usr/lib/x86_64-linux-gnu/openblas-pthread).
#
# Usage: bash tools/train/eagle.sh                 # WINDOWS=600 MINUTES=80 by default
#        WINDOWS=2000 MINUTES=240 bash tools/train/eagle.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=/usr/bin/python3
THREADS=${THREADS:-2}
WINDOWS=${WINDOWS:-600}      # 1024-token windows of the train split (75% code): 614k feature rows
MINUTES=${MINUTES:-80}       # training budget; the learning-rate schedule follows it
export OPENBLAS_NUM_THREADS=$THREADS PYTHONUNBUFFERED=1
if [ -n "${OPENBLAS_DIR:-}" ]; then export LD_LIBRARY_PATH=$OPENBLAS_DIR${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}; fi
RUN="nice -n 19 $PY tools/train/eagle.py --threads $THREADS"

if [ ! -f data/tokens/train.code.bin ]; then
  $PY tools/train/corpus.py --out data/corpus
  $PY tools/train/encode.py --corpus data/corpus --tokenizer models/tokenizer.json --out data/tokens
fi
$RUN extract --windows "$WINDOWS" --cache .cache/eagle/train
$RUN train --cache .cache/eagle/train --run runs/eagle --minutes "$MINUTES" --intermediate 1024 --vocab 2048 --batch 4 --lr 1e-3
$RUN evaluate --run runs/eagle --cache .cache/eagle/train
$RUN export --run runs/eagle --cache .cache/eagle/train --out models/eagle
$PY tools/train/add_hidden_output.py models/target/model.onnx --out scratch/target-hidden/model.onnx --copy-dir
nice -n 19 node tools/train/eagle_check.mjs --target scratch/target-hidden --drafter models/eagle --record models/eagle/record.json
nice -n 19 $PY tools/train/eagle.py card --models models
