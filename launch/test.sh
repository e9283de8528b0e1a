#!/usr/bin/env bash
# The test command of the README: the whole suite on 8 simulated CPU devices.
set -euo pipefail
export XLA_FLAGS="${XLA_FLAGS:---xla_force_host_platform_device_count=8}"
exec python -m pytest tests -q "$@"
