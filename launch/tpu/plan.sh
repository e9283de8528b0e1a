#!/usr/bin/env bash
# Before starting a pod: compile the recipe's training programs for the slice, on any machine
# (no TPU needed; `pip install -e ".[tpu]"` brings libtpu), and read whether each fits a chip,
# what it communicates and how long the recipe takes at best:
#   bash launch/tpu/plan.sh configs/pnoc_voc.py:dtype=bfloat16 v5e:2x2 [--config.runtime.remat=True ...]
# Prints the table, writes plan-<topology>.json; exit 3 when a program does not fit (the table
# says which and what would: e.g. --config.runtime.remat=True), 2 for a config the run would
# refuse on that slice. Then run the recipe with the same config and overrides (run.sh).
set -euo pipefail
config=$1; topology=$2; shift 2
export TF_CPP_MIN_LOG_LEVEL=3
# Fewer glibc heaps, so that the next TPU compile reuses what one freed: ResNeSt-269's programs
# take 8-14 GB of RAM each to compile, P-NOC's two in one process 19.6 GB with this setting and
# over 24 GB without it (docs/performance.md).
export MALLOC_ARENA_MAX=${MALLOC_ARENA_MAX:-2}
exec python -m pnoc_jax.plan --config "$config" --topology "$topology" \
    --json "plan-${topology//:/_}.json" "$@"
