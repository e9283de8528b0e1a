#!/usr/bin/env bash
# The test command of the README: the whole suite on 8 simulated CPU devices per process, in
# TEST_WORKERS pytest-xdist workers (default 2; each test file runs whole on one worker, and
# the session fixtures of tests/conftest.py are built once for all workers).
# Arguments replace the default target: `bash launch/test.sh tests/test_crf.py -x`.
set -euo pipefail
export XLA_FLAGS="${XLA_FLAGS:---xla_force_host_platform_device_count=8}"
if [ "$#" -eq 0 ]; then set -- tests; fi
exec python -m pytest -q -n "${TEST_WORKERS:-2}" --dist loadfile "$@"
