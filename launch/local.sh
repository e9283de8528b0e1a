#!/usr/bin/env bash
# Run a config locally: bash launch/local.sh configs/quickstart.py runs/quickstart [--config.x=y ...]
set -euo pipefail
config=$1; workdir=$2; shift 2
export TF_CPP_MIN_LOG_LEVEL=3
exec python -m pnoc_jax.main --config "$config" --workdir "$workdir" "$@"
