#!/usr/bin/env bash
# Provision a TPU VM worker: a Python 3.12 venv with pnoc_jax and jax[tpu].
set -euo pipefail
python3.12 -m venv ~/pnoc_venv || { echo "python3.12 is required (TPU images ship 3.10)"; exit 1; }
. ~/pnoc_venv/bin/activate
pip install -U pip
pip install -e ".[tpu]"
