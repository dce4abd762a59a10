#!/usr/bin/env bash
# Retrains the EAGLE feature drafter (models/eagle, issue 24) on the CPU from the shipped target, in the
# three phases the shipped drafter went through (models/README.md):
#   phase 1  the layer starts as the target's last layer: WINDOWS1 windows of target features (seed 24),
#            MINUTES1 of training at lr 1e-3 with EAGLE's token-loss weight 0.1 -> scratch/eagle-phase1
#   phase 2  a warm start from phase 1 on WINDOWS2 fresh windows (seed 25), MINUTES2 at lr 5e-4 with the
#            token loss weighted 1.0 -> scratch/eagle-phase2
#   phase 3  a warm start from phase 2 on WINDOWS3 fresh windows (seed 26), MINUTES3 as phase 2 -> models/eagle
# then test agreement, the ONNX export, a check against ONNX Runtime with one pass timed beside the
# target's, and the card section of models/README.md. FROM=DIR skips phases 1 and 2 and warm-starts the
# last from an exported drafter folder (FROM=models/eagle continues the shipped one: give it fresh windows
# and its own run and cache folders, SEED3, RUN3 and CACHE3, or it resumes or repeats the shipped run).
# The shipped record's notes (provenance: load, timings) were added by hand (`export --note`, or into
# record.json). The shipped phases 2 and 3 trained beside their extraction, re-reading the shards as they
# came; this script extracts first, so a rerun trains on every window from its first step.
#
# Resumable: extraction keeps its shards (.cache/eagle/train, train2, train3), training continues
# from runs/eagle*/ckpt.pt. Everything runs under nice 19 on THREADS threads (default 2). Outputs:
# models/eagle/ (committed), scratch/eagle-phase1, .cache/ and runs/ (not committed).
#
# Debian's python3-torch calls whichever libblas.so.3 is selected; the reference BLAS makes a 23M
# model's forward 12x slower than OpenBLAS. train_family.sh installs libopenblas0-pthread; where that
# cannot be installed, set OPENBLAS_DIR to an unpacked copy (apt-get download libopenblas0-pthread;
# dpkg-deb -x ... DIR; OPENBLAS_DIR=DIR/usr/lib/x86_64-linux-gnu/openblas-pthread).
#
# Usage: bash tools/train/eagle.sh                       # three phases, about 6 hours on 2 cores
#        FROM=models/eagle SEED3=27 RUN3=runs/eagle4 CACHE3=.cache/eagle/train4 MINUTES3=60 bash tools/train/eagle.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=/usr/bin/python3
THREADS=${THREADS:-2}
WINDOWS1=${WINDOWS1:-600}    # 1024-token windows of the train split (75% code): 614k feature rows
MINUTES1=${MINUTES1:-80}     # training budgets; each learning-rate schedule follows its own
WINDOWS2=${WINDOWS2:-2000}   # 2.05M feature rows, about 2 GB of float16 shards
MINUTES2=${MINUTES2:-85}
WINDOWS3=${WINDOWS3:-2400}   # the shipped phase 3 stopped its extraction at 2312 when its training ended
MINUTES3=${MINUTES3:-70}
SEED3=${SEED3:-26}
RUN3=${RUN3:-runs/eagle3}
CACHE3=${CACHE3:-.cache/eagle/train3}
export OPENBLAS_NUM_THREADS=$THREADS PYTHONUNBUFFERED=1
if [ -n "${OPENBLAS_DIR:-}" ]; then export LD_LIBRARY_PATH=$OPENBLAS_DIR${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}; fi
RUN="nice -n 19 $PY tools/train/eagle.py --threads $THREADS"
SHAPE="--intermediate 1024 --vocab 2048 --batch 4"

if [ ! -f data/tokens/train.code.bin ]; then
  $PY tools/train/corpus.py --out data/corpus
  $PY tools/train/encode.py --corpus data/corpus --tokenizer models/tokenizer.json --out data/tokens
fi
if [ -z "${FROM:-}" ]; then
  $RUN extract --windows "$WINDOWS1" --seed 24 --cache .cache/eagle/train
  $RUN train --cache .cache/eagle/train --run runs/eagle --minutes "$MINUTES1" $SHAPE --lr 1e-3 --token-weight 0.1 --eval-every 40
  $RUN evaluate --run runs/eagle --cache .cache/eagle/train
  $RUN export --run runs/eagle --cache .cache/eagle/train --out scratch/eagle-phase1
  nice -n 19 node tools/train/eagle_check.mjs --target models/target --drafter scratch/eagle-phase1 --record scratch/eagle-phase1/record.json
  $RUN extract --windows "$WINDOWS2" --seed 25 --cache .cache/eagle/train2
  $RUN train --cache .cache/eagle/train2 --run runs/eagle2 --minutes "$MINUTES2" $SHAPE --lr 5e-4 --token-weight 1.0 --eval-every 40 --init-from scratch/eagle-phase1
  $RUN evaluate --run runs/eagle2 --cache .cache/eagle/train2
  $RUN export --run runs/eagle2 --cache .cache/eagle/train2 --out scratch/eagle-phase2
  nice -n 19 node tools/train/eagle_check.mjs --target models/target --drafter scratch/eagle-phase2 --record scratch/eagle-phase2/record.json
  FROM=scratch/eagle-phase2
fi
$RUN extract --windows "$WINDOWS3" --seed "$SEED3" --cache "$CACHE3"
$RUN train --cache "$CACHE3" --run "$RUN3" --minutes "$MINUTES3" $SHAPE --lr 5e-4 --token-weight 1.0 --eval-every 40 --init-from "$FROM"
$RUN evaluate --run "$RUN3" --cache "$CACHE3"
$RUN export --run "$RUN3" --cache "$CACHE3" --out models/eagle
# the shipped target carries its hidden_states output (add_hidden_output.py refuses a graph that has one)
nice -n 19 node tools/train/eagle_check.mjs --target models/target --drafter models/eagle --record models/eagle/record.json
nice -n 19 $PY tools/train/eagle.py card --models models
# servers of the family load the feature drafter family.json names (docs/eagle.md)
$PY -c 'import json, sys; p = "models/family.json"; f = json.load(open(p)); f["eagle"] = "eagle"; open(p, "w").write(json.dumps(f) + "\n")'
echo "models/family.json names the feature drafter: \"eagle\": \"eagle\""
