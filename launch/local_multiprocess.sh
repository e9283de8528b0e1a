#!/usr/bin/env bash
# N processes of one run on this machine, each with its own devices (CPU: D simulated devices
# per process), joined by jax.distributed on localhost:
#   bash launch/local_multiprocess.sh 2 configs/quickstart.py runs/mp [--config.x=y ...]
# DEVICES_PER_PROCESS (default 4) sets XLA's host device count on CPU. Process 0 is the chief;
# the others' logs go to <workdir>/process-<i>.log. Exits with the first non-zero status.
set -euo pipefail
n=$1; config=$2; workdir=$3; shift 3
port=${PORT:-$(python -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')}
export XLA_FLAGS="${XLA_FLAGS:---xla_force_host_platform_device_count=${DEVICES_PER_PROCESS:-4}}"
export TF_CPP_MIN_LOG_LEVEL=3
mkdir -p "$workdir"
pids=()
for ((i = 1; i < n; i++)); do
  python -m pnoc_jax.main --config "$config" --workdir "$workdir" \
    --coordinator_address "127.0.0.1:$port" --num_processes "$n" --process_id "$i" "$@" \
    > "$workdir/process-$i.log" 2>&1 &
  pids+=($!)
done
status=0
python -m pnoc_jax.main --config "$config" --workdir "$workdir" \
  --coordinator_address "127.0.0.1:$port" --num_processes "$n" --process_id 0 "$@" || status=$?
for pid in "${pids[@]}"; do wait "$pid" || [ "$status" -ne 0 ] || status=$?; done
exit "$status"
