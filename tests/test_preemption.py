"""A 2-process training stage preempted with signals seconds apart (as SLURM and TPU
preemption notices come): both processes stop at one step, save one checkpoint and exit 143,
and the resumed run ends with the weights of an uninterrupted 2-process run, bit for bit.
(The per-image stages' preemption: `tests/test_multiprocess.py`.)"""

import os
import pathlib
import re
import signal
import socket
import subprocess
import sys
import time

import pytest

from pnoc_jax.core import artifacts, weights
from tests.conftest import as_flags, tiny_run_overrides
from tests.test_multiprocess import ROOT, _env, _max_diff

pytestmark = pytest.mark.slow  # three 2-process runs


def _start(process_id: int, port: int, workdir: str, flags: list[str]) -> subprocess.Popen:
    command = [
        sys.executable, "-m", "pnoc_jax.main", "--config", "configs/quickstart.py",
        "--workdir", workdir, "--coordinator_address", f"127.0.0.1:{port}",
        "--num_processes", "2", "--process_id", str(process_id), *flags,
    ]  # fmt: skip
    log = open(os.path.join(os.path.dirname(workdir), f"p{process_id}.log"), "a")  # noqa: SIM115
    return subprocess.Popen(command, cwd=ROOT, env=_env(4), stdout=log, stderr=subprocess.STDOUT)


def test_skewed_sigterms_stop_both_processes_at_one_step_then_resume(synthetic_data_dir, tmp_path):
    """SIGTERM to process 1, then 3 s later to process 0 (as SLURM and TPU preemption notices
    do): both checkpoint the same step and exit 143, and the resumed run ends with the weights
    of an uninterrupted 2-process run, bit for bit."""
    overrides = {
        **tiny_run_overrides(synthetic_data_dir, ("train_oc",)),
        "oc.steps": 40, "runtime.log_every": 5, "runtime.ckpt_every": 100,
    }  # fmt: skip
    flags = as_flags(overrides)
    workdir = str(tmp_path / "run")
    metrics = os.path.join(artifacts.stage_dir(workdir, "train_oc"), "metrics.jsonl")
    port = _free_port()
    processes = [_start(i, port, workdir, flags) for i in (0, 1)]
    deadline = time.time() + 300
    while not (os.path.exists(metrics) and os.path.getsize(metrics)) and time.time() < deadline:
        assert all(p.poll() is None for p in processes), _logs_of(tmp_path)
        time.sleep(0.05)
    processes[1].send_signal(signal.SIGTERM)
    time.sleep(3)
    if processes[0].poll() is None:
        processes[0].send_signal(signal.SIGTERM)
    codes = [p.wait(timeout=180) for p in processes]
    logs = _logs_of(tmp_path)
    assert codes == [143, 143], logs[-4000:]
    steps = [int(n) for n in re.findall(r"checkpoint saved at step (\d+)", logs)]
    assert len(steps) == 2 and steps[0] == steps[1] < 40, logs[-4000:]
    assert steps[0] % 5 == 0  # the processes agree at a log step
    port = _free_port()
    processes = [_start(i, port, workdir, flags) for i in (0, 1)]
    assert [p.wait(timeout=600) for p in processes] == [0, 0], _logs_of(tmp_path)[-4000:]
    assert f"train_oc: resuming from step {steps[0]}" in _logs_of(tmp_path)

    uninterrupted = str(tmp_path / "uninterrupted")
    port = _free_port()
    processes = [_start(i, port, uninterrupted, flags) for i in (0, 1)]
    assert [p.wait(timeout=600) for p in processes] == [0, 0], _logs_of(tmp_path)[-4000:]
    one = weights.load(artifacts.weights_file(uninterrupted, "train_oc"))
    two = weights.load(artifacts.weights_file(workdir, "train_oc"))
    assert _max_diff(one, two) == 0.0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _logs_of(folder: pathlib.Path) -> str:
    return "".join((folder / f"p{i}.log").read_text() for i in (0, 1))
