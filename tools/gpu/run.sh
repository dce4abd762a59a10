#!/usr/bin/env bash
# The GPU measurement, in one run on a machine prepared by tools/gpu/prepare.sh (carry its OUTDIR;
# run from the folder that holds it): `bash .gpu/run.sh`. Writes JSON and logs under $OUT (the device
# tool's output folder; default ./gpu-out), to be kept in bench/results/gpu/.
# Measures, with the project's own runner (bench costs: prefill, decode ms/token, verify(k) over a
# cache, rolled back after each), on the WebGPU EP with the KV through the host and on the device,
# side by side, and on the CPU EP: the 91M and 316M random-weight shapes at a 1024-token context,
# and the bundled drafters at 256; each shape's fused form (tools/train/fuse.py, run here on the
# filled weights) on the WebGPU EP with the KV on the device. Then greedy generation on the GPU against the CPU EP (tokens must
# match). Environment: SHAPES (default "s091m s316m"), PAST (1024), REPEATS (3), THREADS (16 for the
# CPU EP), RT_LOCAL=1 to use this machine's node and node_modules instead of the packed runtime (a test
# run without a GPU, on lavapipe).
set -uo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
out=${OUT:-$PWD/gpu-out}
mkdir -p "$out"
log() { echo "[$(date +%T)] $*" | tee -a "$out/run.log"; }
if [ "${RT_LOCAL:-0}" != 1 ]; then
  source "$here/rt/setup.sh" | tee -a "$out/run.log"
  app=/tmp/rt/cascade   # under /tmp/rt so that ESM resolution finds /tmp/rt/node_modules/onnxruntime-node
else
  app=${RT_APP:?RT_LOCAL=1 needs RT_APP: a folder inside the checkout (node_modules above it)}
fi
unpack=$(mktemp -d)
xz -dc "$here/cascade.tar.xz" | tar -C "$unpack" -xf -
rm -rf "$app" && mkdir -p "$(dirname "$app")" && mv "$unpack/cascade" "$app"
cascade=(node "$app/main.js")   # `cascade <command>`
log "node $(node --version); VK_DRIVER_FILES=${VK_DRIVER_FILES:-}"
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee -a "$out/run.log"
log "filling the random-weight shapes …"
python3 "$here/random_shapes.py" fill "$here/shapes" >>"$out/run.log" 2>&1
past=${PAST:-1024}; repeats=${REPEATS:-3}; threads=${THREADS:-16}
for s in ${SHAPES:-s091m s316m}; do
  log "$s: WebGPU EP, KV through the host and on the device (past $past) …"
  timeout 900 "${cascade[@]}" bench costs --model "$here/shapes/$s" --tokenizer "$here/models/tokenizer.json" --execution-providers webgpu \
    --kv-location host,device --past "$past" --repeats "$repeats" --out "$out/$s-webgpu" 2>&1 | tee -a "$out/run.log"
  # the fused form (GroupQueryAttention, RotaryEmbedding, SkipSimplifiedLayerNormalization) of the same weights
  if python3 "$here/fuse.py" --model "$here/shapes/$s" --out "$here/shapes/$s-fused" --graph-only >>"$out/run.log" 2>&1; then
    log "$s fused: WebGPU EP, KV on the device (past $past) …"
    timeout 900 "${cascade[@]}" bench costs --model "$here/shapes/$s-fused" --tokenizer "$here/models/tokenizer.json" --execution-providers webgpu \
      --kv-location device --past "$past" --repeats "$repeats" --out "$out/$s-fused-webgpu" 2>&1 | tee -a "$out/run.log"
  else log "$s: fuse.py failed (see above)"; fi
  log "$s: CPU EP, $threads threads …"
  timeout 900 "${cascade[@]}" bench costs --model "$here/shapes/$s" --tokenizer "$here/models/tokenizer.json" --threads "$threads" \
    --past "$past" --repeats "$repeats" --out "$out/$s-cpu" 2>&1 | tee -a "$out/run.log"
done
log "the drafters: WebGPU EP (device KV) and CPU EP, past 256 …"
timeout 600 "${cascade[@]}" bench costs --model "$here/models/draft-l2" --draft-model "$here/models/draft-l1" --execution-providers webgpu --kv-location device --past 256 --repeats "$repeats" --out "$out/drafters-webgpu" 2>&1 | tee -a "$out/run.log"
timeout 600 "${cascade[@]}" bench costs --model "$here/models/draft-l2" --draft-model "$here/models/draft-l1" --past 256 --repeats "$repeats" --out "$out/drafters-cpu" 2>&1 | tee -a "$out/run.log"
log "greedy generation: draft-l2 on the GPU with draft-l1 on the CPU, against the CPU EP …"
prompt='def parse_args(argv):'
gpu=$(timeout 600 "${cascade[@]}" generate --json --model "$here/models/draft-l2" --draft-model "$here/models/draft-l1" --execution-providers webgpu --max-tokens 64 --temperature 0 "$prompt")
cpu=$(timeout 600 "${cascade[@]}" generate --json --model "$here/models/draft-l2" --draft-model "$here/models/draft-l1" --max-tokens 64 --temperature 0 "$prompt")
echo "$gpu" > "$out/generate-webgpu.json"; echo "$cpu" > "$out/generate-cpu.json"
node -e 'const [a,b]=process.argv.slice(1).map(f=>JSON.parse(require("fs").readFileSync(f,"utf8")));console.log(JSON.stringify(a.tokenIds)===JSON.stringify(b.tokenIds)?"greedy tokens identical on WebGPU and CPU":"GREEDY TOKENS DIFFER")' "$out/generate-webgpu.json" "$out/generate-cpu.json" | tee -a "$out/run.log"
log "done"
