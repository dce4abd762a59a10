#!/usr/bin/env bash
# Pass costs of the unfused and fused forms (docs/gpu.md, "Graph forms"): `cascade bench costs` per
# round, past and form, interleaved so that a busy machine slows both alike. Writes RUNS/rR/past-P/FORM/.
#   EP=cpu    bash bench/results/forms/run.sh /tmp/forms-cpu      # target, draft-l2, draft-l1; pasts 64 256 1024; 4 rounds
#   EP=webgpu bash bench/results/forms/run.sh /tmp/forms-webgpu   # draft-l2 (as target), draft-l1; pasts 64 256; 2 rounds; KV on the device
# The fused folders come first: /usr/bin/python3 tools/train/fuse.py --model models/X --out /tmp/fused/X
set -euo pipefail
runs=${1:?usage: run.sh RUNS_DIR}
EP=${EP:-cpu}
if [ "$EP" = cpu ]; then
  pasts="64 256 1024"; rounds=4; repeats=9; extra=""
  unfused=""; fused="--model /tmp/fused/target --draft-model /tmp/fused/draft-l2 --draft-model /tmp/fused/draft-l1"
else
  pasts="64 256"; rounds=2; repeats=5; extra="--execution-providers $EP --kv-location device"
  unfused="--model models/draft-l2 --draft-model models/draft-l1"; fused="--model /tmp/fused/draft-l2 --draft-model /tmp/fused/draft-l1"
fi
for round in $(seq 1 $rounds); do
  for past in $pasts; do
    for form in unfused fused; do
      args=$unfused; [ $form = fused ] && args=$fused
      out=$runs/r$round/past-$past/$form
      node bin/cascade bench costs $args $extra --past $past --repeats $repeats --out "$out" >/dev/null 2>&1
      cut -d' ' -f1-3 /proc/loadavg > "$out/loadavg"
      echo "round $round past $past $form: $out (load $(cat "$out/loadavg"))"
    done
  done
done
