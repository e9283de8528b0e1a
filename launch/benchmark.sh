#!/usr/bin/env bash
# The benchmark suite on whatever devices are present, one JSON object on stdout:
#   bash launch/benchmark.sh [backbone] [batch] [size] [dtype]    (default: resnet50 4 224 float32)
# P-NOC's step (both updates) and TTA inference, the C²AM-H step, DeepLabV3+'s step and its
# multi-scale inference, the CPU stages (dense CRF vs pydensecrf2, random walk:
# python -m pnoc_jax.cpu_benchmark) and, when PyTorch is installed, the same P-NOC step in
# PyTorch (tests/oracles/torch_pnoc_step.py) with the ratio ours/theirs.
set -euo pipefail
cd "$(dirname "$0")/.."
backbone=${1:-resnet50}; batch=${2:-4}; size=${3:-224}; dtype=${4:-float32}
export TF_CPP_MIN_LOG_LEVEL=3
out=$(mktemp -d); trap 'rm -rf "$out"' EXIT
common=(--backbone "$backbone" --batch "$batch" --size "$size" --dtype "$dtype" --steps 3)
python -m pnoc_jax.benchmark --strategy pnoc "${common[@]}" > "$out/pnoc.json"
python -m pnoc_jax.benchmark --saliency ccamh "${common[@]}" > "$out/ccamh.json"
python -m pnoc_jax.benchmark --task segmentation "${common[@]}" --infer_images 1 \
  > "$out/deeplabv3plus.json"
python -m pnoc_jax.cpu_benchmark > "$out/cpu.json"
if python -c "import torch" 2> /dev/null; then
  python -m tests.oracles.torch_pnoc_step --backbone "$backbone" --batch "$batch" \
    --size "$size" --steps 3 > "$out/torch_pnoc.json"
fi
python - "$out" << 'PY'
import json, os, sys

out = sys.argv[1]
suite = {f[:-5]: json.load(open(os.path.join(out, f))) for f in sorted(os.listdir(out))}
if "torch_pnoc" in suite:
    ours, theirs = suite["pnoc"]["train_images_per_s"], suite["torch_pnoc"]["train_images_per_s"]
    suite["pnoc_ratio_jax_over_torch"] = ours / theirs
print(json.dumps(suite, indent=2))
PY
