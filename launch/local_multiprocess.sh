#!/usr/bin/env bash
# N processes of one run on this machine, each with its own devices (CPU: D simulated devices
# per process), joined by jax.distributed on localhost:
#   bash launch/local_multiprocess.sh 2 configs/quickstart.py runs/mp [--config.x=y ...]
# DEVICES_PER_PROCESS (default 4) sets XLA's host device count on CPU. Process 0 is the chief
# and logs here; the others log to <workdir>/process-<i>.log. As srun --kill-on-bad-exit does,
# the first process to fail stops the others (SIGTERM: training checkpoints; SIGKILL after
# GRACE seconds, default 120, for one blocked in a collective with the dead process); the
# script exits with that status, and rerunning the same command resumes. SIGTERM to this script
# (`timeout`, `kill`, a scheduler) goes to every process: they stop together at one step,
# checkpoint, and the script exits 143 once they have. (Ctrl-C on a terminal reaches every
# process itself.)
set -euo pipefail
n=$1; config=$2; workdir=$3; shift 3
port=${PORT:-$(python -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')}
export XLA_FLAGS="${XLA_FLAGS:---xla_force_host_platform_device_count=${DEVICES_PER_PROCESS:-4}}"
export TF_CPP_MIN_LOG_LEVEL=3
mkdir -p "$workdir"
pids=()
for ((i = 0; i < n; i++)); do
  args=(--config "$config" --workdir "$workdir" --coordinator_address "127.0.0.1:$port"
        --num_processes "$n" --process_id "$i" "$@")
  if [ "$i" -eq 0 ]; then
    python -m pnoc_jax.main "${args[@]}" &
  else
    python -m pnoc_jax.main "${args[@]}" > "$workdir/process-$i.log" 2>&1 &
  fi
  pids+=($!)
done
status=0
reaper=""
terminated=""
trap 'terminated=1; kill -TERM "${pids[@]}" 2>/dev/null || true' TERM
running=("${pids[@]}")
while [ "${#running[@]}" -gt 0 ]; do
  code=0
  finished=""
  wait -n -p finished "${running[@]}" || code=$?  # bash >= 5.1
  if [ -z "${finished:-}" ]; then
    if [ -n "$terminated" ]; then continue; fi  # the trap ran: wait for the processes
    break
  fi
  left=()
  for pid in "${running[@]}"; do
    if [ "$pid" != "$finished" ]; then left+=("$pid"); fi
  done
  running=("${left[@]}")
  if [ "$code" -ne 0 ] && [ "$status" -eq 0 ]; then
    status=$code
    echo "local_multiprocess: a process exited with status $code; stopping the others" >&2
    kill -TERM "${pids[@]}" 2>/dev/null || true
    (sleep "${GRACE:-120}"; kill -KILL "${pids[@]}" 2>/dev/null) > /dev/null 2>&1 &
    reaper=$!
  fi
done
if [ -n "$reaper" ]; then pkill -P "$reaper" 2>/dev/null || true; kill "$reaper" 2>/dev/null || true; fi
exit "$status"
