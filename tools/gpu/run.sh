#!/usr/bin/env bash
# The GPU measurement, in one run on a machine prepared by tools/gpu/prepare.sh (carry its OUTDIR;
# run from the folder that holds it): `bash .gpu/run.sh`. Writes run.log and results.tgz (every JSON
# record and log) under $OUT (the device tool's output folder; default ./gpu-out), to be kept in
# bench/results/gpu/.
# Measures with the project's own runner, most important first, each step under `timeout` and all of
# them within BUDGET_S seconds (a step that would start past it is skipped and logged, so a slow
# machine loses the comparisons, not the goals):
#  1. bench costs (prefill, decode ms/token, verify(k) for k up to 32 over a cache, rolled back after
#     each; batched passes of 1, 2, 4 and 8 sequences, decode and verify(8)) of the 91M and 316M
#     random-weight shapes at a 1024-token context on the WebGPU EP with the KV on the device, in the
#     unfused form and the fused one (tools/train/fuse.py, run here on the filled weights);
#  2. the cascade end to end (bench cascade, greedy, code prompts): draft-l2 as the target on the
#     WebGPU EP with device KV, draft-l1 and MaG on the CPU, every method against target-only (ar)
#     on the same placement; then greedy generation on the GPU against the CPU EP (tokens must match);
#  3. the comparisons: the shapes on the WebGPU EP with the KV through the host and on the CPU EP
#     (no batched passes), and the bundled drafters on the WebGPU EP (device KV) and the CPU EP at 256;
#  4. issue 24's speed bar: bench cascade of the bundled family, the target (its weights as float16
#     for travel, exact) on the WebGPU EP with device KV, its drafters, the 8-bit feature drafter (EAGLE) and
#     MaG on the CPU: csd with the feature level beside csd and MaG alone, greedy and at T = 0.7, on
#     issue 24's held-out code prompts. Needs OUTDIR-family (prepare.sh) beside this folder: it does
#     not fit in one call with it, so a first call carries .gpu and runs STEPS=none (the set-up only),
#     a second carries .gpu-family and runs the steps (docs/gpu.md, Measuring on a GPU).
# Environment: STEPS (the steps to run, in order; default "4 1 2 3", the open issue's first; "none":
# only unpack the runtime and the app), SHAPES (default "s091m s316m"), PAST (1024), REPEATS (3),
# THREADS (16 for the CPU EP), FAMILY_PROMPTS and FAMILY_TOKENS (step 4's prompts measured and tokens
# each, 4 and 64), BUDGET_S (480: the whole run, seconds), RT_LOCAL=1 to use this
# machine's node and node_modules instead of the packed runtime (a test run without a GPU, on lavapipe).
set -uo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# what comes back from the device tool is at most 8 files: every record goes under $ret/results, packed
# into $ret/results.tgz when the script exits, beside a copy of run.log
ret=${OUT:-$PWD/gpu-out}
out=$ret/results
mkdir -p "$out"
trap 'touch "$out/run.log"; tar -C "$ret" -czf "$ret/results.tgz" results && cp "$out/run.log" "$ret/run.log" && rm -rf "$out"' EXIT
budget=${BUDGET_S:-480}
log() { echo "[$(date +%T) ${SECONDS}s] $*" | tee -a "$out/run.log"; }
# step CAP NAME CMD...: CMD under `timeout` of CAP seconds or what is left of BUDGET_S, whichever is
# less, its output in run.log; skipped when under 20 s are left. Returns CMD's status.
step() {
  local cap=$1 name=$2 t=$((budget - SECONDS))
  shift 2
  ((t > cap)) && t=$cap
  if ((t < 20)); then log "$name: SKIPPED, out of time (BUDGET_S=$budget)"; return 1; fi
  log "$name (at most ${t} s) …"
  timeout "$t" "$@" 2>&1 | tee -a "$out/run.log"
  local rc=${PIPESTATUS[0]}
  ((rc == 124)) && log "$name: TIMED OUT after ${t} s"
  ((rc != 0 && rc != 124)) && log "$name: FAILED (exit $rc)"
  return "$rc"
}
# into FILE CMD...: CMD with its stdout in FILE (stderr still logged by step)
into=(sh -c 'f=$1; shift; exec "$@" > "$f"' into)
if [ "${RT_LOCAL:-0}" != 1 ]; then
  # not in a pipe: a sourced script's exports (PATH to node, VK_DRIVER_FILES) would stay in a subshell
  vk=${VK_DRIVER_FILES:-}
  source "$here/rt/setup.sh" > "$out/setup.log" 2>&1
  # its status is its last echo's: whether it worked is whether its node runs
  /tmp/rt/bin/node --version > /dev/null 2>&1 || { cat "$out/setup.log" | tee -a "$out/run.log"; echo "the packed runtime did not set up (above)" | tee -a "$out/run.log"; exit 1; }
  # setup.sh names NVIDIA's Vulkan driver; where it found none, the caller's (lavapipe, trying the script here)
  [ -n "$VK_DRIVER_FILES" ] || export VK_DRIVER_FILES=$vk
  tee -a "$out/run.log" < "$out/setup.log"
  app=/tmp/rt/cascade   # under /tmp/rt so that ESM resolution finds /tmp/rt/node_modules/onnxruntime-node
else
  app=${RT_APP:?RT_LOCAL=1 needs RT_APP: a folder inside the checkout (node_modules above it)}
fi
unpack=$(mktemp -d)
xz -dc "$here/cascade.tar.xz" | tar -C "$unpack" -xf -
rm -rf "$app" && mkdir -p "$(dirname "$app")" && mv "$unpack/cascade" "$app"
cascade=(node "$app/main.js")   # `cascade <command>`
tok=(--tokenizer "$here/models/tokenizer.json")
log "node $(node --version); VK_DRIVER_FILES=${VK_DRIVER_FILES:-}; budget ${budget} s"
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee -a "$out/run.log"
past=${PAST:-1024}; repeats=${REPEATS:-3}; threads=${THREADS:-16}
shapes=${SHAPES:-s091m s316m}
steps=" ${STEPS:-4 1 2 3} "
fam=$(dirname "$here")/$(basename "$here")-family
# the steps run in the order STEPS names them
run_steps() { for n in $steps; do [ "$n" = none ] || "step$n"; done; }

# 4. issue 24's speed bar: the bundled family with its target on the GPU and the feature drafter on the CPU
step4() {
  if [ ! -d "$fam/models/target" ]; then log "step 4: SKIPPED, $fam is missing (carry it, in a call after the one that carried $here)"; return; fi
  [ -f "$fam/models/target/weights.bin" ] || step 60 "unpacking the target's float16 weights" python3 "$fam/travel_weights.py" unpack "$fam/models/target" || return
  for f in draft-l1 draft-l2 bigram.bin trigram.bin; do rm -rf "${fam:?}/models/$f" && cp -r "$here/models/$f" "$fam/models/"; done
  echo '{"target": "target", "drafters": ["draft-l2", "draft-l1"], "bigram": "bigram.bin", "trigram": "trigram.bin"}' > "$fam/models/family.json"
  # one run per temperature, greedy first: bench cascade writes its records at the end, so a sampled
  # run cut off by its cap does not take the greedy one with it (each sweeps K on its own). The caps
  # leave steps 1-3 at least 150 s of the default budget
  local temp cap
  for temp in 0 0.7; do
    cap=150; [ "$temp" = 0 ] || cap=120
    step "$cap" "issue 24, T = $temp: the target on the WebGPU EP (device KV), its drafters, the 8-bit feature drafter and MaG on the CPU, against ar" \
      "${cascade[@]}" bench cascade --models "$fam/models" --eagle-model "$fam/models/eagle-int8" --prompts-dir "$fam/prompts" \
      --execution-providers webgpu --kv-location device --draft-execution-providers cpu --methods 'mag,csd,csd+eagle,mag>csd+eagle' --workload code \
      --temperatures "$temp" --prompts "${FAMILY_PROMPTS:-4}" --sweep-prompts 2 --repeats 2 --max-tokens "${FAMILY_TOKENS:-64}" --out "$out/eagle-webgpu-t$temp"
  done
}

# 1. the goals: device KV, unfused and fused, verify(k) and batched passes
step1() {
  step 120 "filling the random-weight shapes" python3 "$here/random_shapes.py" fill "$here/shapes"
  for s in $shapes; do
    step 240 "$s: WebGPU EP, KV on the device, batched 1,2,4,8 (past $past)" "${cascade[@]}" bench costs --model "$here/shapes/$s" "${tok[@]}" \
      --execution-providers webgpu --kv-location device --past "$past" --repeats "$repeats" --batch 1,2,4,8 --out "$out/$s-webgpu-device"
    # the fused form (GroupQueryAttention, RotaryEmbedding, SkipSimplifiedLayerNormalization) of the same weights
    if step 120 "$s: fusing" python3 "$here/fuse.py" --model "$here/shapes/$s" --out "$here/shapes/$s-fused" --graph-only; then
      step 240 "$s fused: WebGPU EP, KV on the device, batched 1,2,4,8 (past $past)" "${cascade[@]}" bench costs --model "$here/shapes/$s-fused" "${tok[@]}" \
        --execution-providers webgpu --kv-location device --past "$past" --repeats "$repeats" --batch 1,2,4,8 --out "$out/$s-fused-webgpu-device"
    fi
  done
}

# 2. the cascade end to end: the target on the GPU, drafters on the CPU, against target-only on the GPU
step2() {
  step 240 "the cascade: draft-l2 on the WebGPU EP (device KV), draft-l1 and MaG on the CPU, against ar" "${cascade[@]}" bench cascade \
    --models "$here/models" --prompts-dir "$here/prompts" --execution-providers webgpu --kv-location device --draft-execution-providers cpu \
    --workload code --temperatures 0 --prompts 4 --sweep-prompts 2 --repeats 2 --max-tokens 64 --out "$out/cascade-webgpu"
  prompt='def parse_args(argv):'
  gen=(generate --json --model "$here/models/draft-l2" --draft-model "$here/models/draft-l1" --max-tokens 64 --temperature 0)
  step 120 "greedy generation: draft-l2 on the GPU with draft-l1 placed by cost" "${into[@]}" "$out/generate-webgpu.json" "${cascade[@]}" "${gen[@]}" --execution-providers webgpu "$prompt"
  step 60 "greedy generation: the CPU EP" "${into[@]}" "$out/generate-cpu.json" "${cascade[@]}" "${gen[@]}" "$prompt"
  node -e 'const [a,b]=process.argv.slice(1).map(f=>JSON.parse(require("fs").readFileSync(f,"utf8")));console.log(JSON.stringify(a.tokenIds)===JSON.stringify(b.tokenIds)?"greedy tokens identical on WebGPU and CPU":"GREEDY TOKENS DIFFER")' "$out/generate-webgpu.json" "$out/generate-cpu.json" 2>&1 | tee -a "$out/run.log"
}

# 3. the comparisons: KV through the host, the CPU EP, the drafters
step3() {
  for s in $shapes; do
    step 180 "$s: WebGPU EP, KV through the host (past $past)" "${cascade[@]}" bench costs --model "$here/shapes/$s" "${tok[@]}" \
      --execution-providers webgpu --kv-location host --past "$past" --repeats "$repeats" --no-batch --out "$out/$s-webgpu-host"
    step 180 "$s: CPU EP, $threads threads (past $past)" "${cascade[@]}" bench costs --model "$here/shapes/$s" "${tok[@]}" --threads "$threads" \
      --past "$past" --repeats "$repeats" --no-batch --out "$out/$s-cpu"
  done
  step 120 "the drafters: WebGPU EP (device KV), past 256" "${cascade[@]}" bench costs --model "$here/models/draft-l2" --draft-model "$here/models/draft-l1" \
    --execution-providers webgpu --kv-location device --past 256 --repeats "$repeats" --batch 1,8 --out "$out/drafters-webgpu"
  step 60 "the drafters: CPU EP, past 256" "${cascade[@]}" bench costs --model "$here/models/draft-l2" --draft-model "$here/models/draft-l1" \
    --past 256 --repeats "$repeats" --batch 1,8 --out "$out/drafters-cpu"
}

run_steps
log "done in ${SECONDS} s"
