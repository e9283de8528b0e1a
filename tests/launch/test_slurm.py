"""launch/slurm/train.sbatch without SLURM: fake `srun` and `scontrol` on PATH record what the
script does when the time limit nears (USR1) and when training simply ends."""

import os
import signal
import subprocess
import time

ROOT = os.path.join(os.path.dirname(__file__), "..", "..")
SCRIPT = os.path.join(ROOT, "launch", "slurm", "train.sbatch")

FAKE_SRUN = """#!/usr/bin/env bash
echo "$@" > "$MARKS/srun_args"
trap 'echo term > "$MARKS/term"; exit 143' TERM
touch "$MARKS/started"
if [ -n "${FINISH:-}" ]; then exit 0; fi
while true; do sleep 0.05; done
"""
FAKE_SCONTROL = """#!/usr/bin/env bash
echo "$@" >> "$MARKS/scontrol"
"""


def _start(tmp_path, **env):
    bin_dir, marks = tmp_path / "bin", tmp_path / "marks"
    bin_dir.mkdir()
    marks.mkdir()
    for name, text in (("srun", FAKE_SRUN), ("scontrol", FAKE_SCONTROL)):
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    environ = {
        **os.environ,
        "PATH": f"{bin_dir}:{os.environ['PATH']}",
        "MARKS": str(marks),
        "SLURM_JOB_ID": "4242",
        **env,
    }
    args = ["bash", SCRIPT, "configs/pnoc_voc.py", str(tmp_path / "run"), "--config.seed=1"]
    return subprocess.Popen(args, env=environ, stderr=subprocess.PIPE, text=True), marks


def _wait_for(path, timeout=20.0):
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.05)


def test_time_limit_checkpoints_then_requeues(tmp_path):
    process, marks = _start(tmp_path)
    _wait_for(marks / "started")
    process.send_signal(signal.SIGUSR1)
    _, stderr = process.communicate(timeout=30)
    assert process.returncode == 0, stderr
    assert (marks / "term").exists()  # training got SIGTERM: it checkpoints and exits
    assert (marks / "scontrol").read_text().split() == ["requeue", "4242"]
    assert "requeueing job 4242" in stderr
    args = (marks / "srun_args").read_text().split()
    assert args[:4] == ["--kill-on-bad-exit=1", "python", "-m", "pnoc_jax.main"]
    assert args[-1] == "--config.seed=1"


def test_finished_training_is_not_requeued(tmp_path):
    process, marks = _start(tmp_path, FINISH="1")
    _, stderr = process.communicate(timeout=30)
    assert process.returncode == 0, stderr
    assert not (marks / "scontrol").exists() and not (marks / "term").exists()
