#!/usr/bin/env bash
# The test command of the README: the whole suite on 8 simulated CPU devices.
# Arguments replace the default target: `bash launch/test.sh tests/test_crf.py -x`.
set -euo pipefail
export XLA_FLAGS="${XLA_FLAGS:---xla_force_host_platform_device_count=8}"
if [ "$#" -eq 0 ]; then set -- tests; fi
exec python -m pytest -q "$@"
