#!/usr/bin/env bash
# Run on every worker of a Cloud TPU VM pod slice:
#   gcloud compute tpus tpu-vm ssh $TPU --zone $ZONE --worker=all \
#     --command "cd pnoc_jax && bash launch/tpu/run.sh configs/pnoc_voc.py:dtype=bfloat16 \
#       gs://bucket/voc --config.runtime.remat=True"
# Needs Python >= 3.11 and `pip install -e ".[tpu]"` on each worker (launch/tpu/setup.sh).
# Plan first, anywhere (no TPU): `bash launch/tpu/plan.sh configs/pnoc_voc.py:dtype=bfloat16
# v5e:2x2 --config.runtime.remat=True` says
# whether every program fits the slice's chips and how long the recipe takes at best; pass the
# same --config overrides here as there, so the run compiles what the plan compiled.
set -euo pipefail
config=$1; workdir=$2; shift 2
export TF_CPP_MIN_LOG_LEVEL=3
exec python -m pnoc_jax.main --config "$config" --workdir "$workdir" --distributed "$@"
