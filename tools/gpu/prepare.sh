#!/usr/bin/env bash
# Prepares everything a bare GPU machine (no Node, no network, at most 64 MiB carried in) needs to
# measure this project on a GPU with one script (tools/gpu/run.sh), into OUTDIR (default .gpu, which
# git ignores):
#   rt/        Node 20, onnxruntime-node (linux-x64, its WebGPU EP) and the Vulkan loader
#              (../shared/gpu/pack-runtime.sh)
#   cascade.tar.xz  this project as one ESM bundle (esbuild; onnxruntime-node left external) plus
#              its model worker, so `node main.js <command>` is `cascade <command>`
#   shapes/    random-weight 23M/91M/316M decoders of the project's architecture, weights stripped
#              (../shared/gpu/random_shapes.py strip; refilled on the GPU machine)
#   models/    the bundled drafters, the tokenizer and MaG's bigram and trigram tables, with a family.json that
#              makes draft-l2 the target and draft-l1 its drafter (the 91 MB target does not fit the carry)
#   prompts/   the held-out code prompts (bench/prompts/code.jsonl) for bench cascade
#   fuse.py    tools/train/fuse.py: run.sh writes each filled shape's fused form with it
#   run.sh     the measurement script (tools/gpu/run.sh)
# and, for issue 24's step (run.sh step 4), into OUTDIR-family (default .gpu-family, about 58 MiB: it
# travels in a call of its own, after the one that carries OUTDIR):
#   models/target      the bundled target, its weights as float16 for travel (tools/gpu/travel_weights.py;
#                      float32 again there: exact, since they were trained rounded to float16, and
#                      the tool says so)
#   models/eagle-int8  the feature drafter (EAGLE) as benchmarked: cascade quantize --bits 8 --quantize-head
#   prompts/   the held-out prompts of issue 24 (bench/results/eagle/prompts/code.jsonl)
#   travel_weights.py
# Needs: npm ci done, Debian's python3 with torch, onnx and regex (apt-get install python3-torch python3-onnx python3-regex),
# and ../shared/gpu beside the checkout. Usage: bash tools/gpu/prepare.sh [OUTDIR]
set -euo pipefail
cd "$(dirname "$0")/../.."
out=${1:-.gpu}
out=${out%/}
fam=$out-family   # run.sh looks for it beside OUTDIR
shared=../shared/gpu
[ -d "$shared" ] || { echo "prepare.sh: $shared is missing (pack-runtime.sh, random_shapes.py)"; exit 1; }
rm -rf "$out" && mkdir -p "$out/models"
echo "bundling the project …"
bundle=$(mktemp -d)
node_modules/.bin/esbuild src/cli/main.ts src/models/ort-worker.ts --bundle --platform=node --format=esm --target=node20 \
  --outdir="$bundle/cascade" --entry-names='[name]' --external:onnxruntime-node --log-level=warning \
  --banner:js="import { createRequire as __cr } from 'node:module'; const require = __cr(import.meta.url);"
cp src/models/worker-bootstrap.mjs "$bundle/cascade/"
echo '{"type":"module"}' > "$bundle/cascade/package.json"
tar -C "$bundle" -cf - cascade | xz -T0 -6 > "$out/cascade.tar.xz"
rm -rf "$bundle"
echo "packing the runtime …"
bash "$shared/pack-runtime.sh" "$out/rt" >/dev/null
echo "exporting the random-weight shapes (weights stripped) …"
/usr/bin/python3 "$shared/random_shapes.py" strip "$out/shapes"
cp "$shared/random_shapes.py" "$out/"
cp tools/train/fuse.py "$out/"
cp -r models/draft-l1 models/draft-l2 models/tokenizer.json models/bigram.bin models/trigram.bin "$out/models/"
rm -f "$out"/models/*/reference.bin
echo '{"target": "draft-l2", "drafters": ["draft-l1"], "bigram": "bigram.bin", "trigram": "trigram.bin"}' > "$out/models/family.json"
mkdir -p "$out/prompts" && cp bench/prompts/code.jsonl "$out/prompts/"
cp tools/gpu/run.sh "$out/run.sh"
du -sh "$out"
echo "packing the target (float16 for travel) and the 8-bit feature drafter into $fam …"
rm -rf "$fam" && mkdir -p "$fam/models" "$fam/prompts"
/usr/bin/python3 tools/gpu/travel_weights.py pack models/target "$fam/models/target"
node --import tsx src/cli/main.ts quantize --model models/eagle --out "$fam/models/eagle-int8" --bits 8 --quantize-head
rm -f "$fam"/models/eagle-int8/reference*
cp models/tokenizer.json "$fam/models/"
cp bench/results/eagle/prompts/code.jsonl "$fam/prompts/"
cp tools/gpu/travel_weights.py "$fam/"
du -sh "$fam"
