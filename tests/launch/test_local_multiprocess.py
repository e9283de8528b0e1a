"""launch/local_multiprocess.sh without JAX: a fake `python` on PATH records what the launcher
does with its processes when it is sent SIGTERM (as `timeout` or `kill` does)."""

import os
import signal
import subprocess
import time

ROOT = os.path.join(os.path.dirname(__file__), "..", "..")
SCRIPT = os.path.join(ROOT, "launch", "local_multiprocess.sh")

# A process of the run: traps SIGTERM as pnoc_jax.main does (finish the step, checkpoint), which
# takes a moment, then exits 143.
FAKE_PYTHON = """#!/usr/bin/env bash
trap 'sleep 0.5; echo stopped > "$MARKS/term-$$"; exit 143' TERM
touch "$MARKS/started-$$"
while true; do sleep 0.05; done
"""


def test_sigterm_to_the_launcher_stops_every_process_and_waits_for_them(tmp_path):
    bin_dir, marks = tmp_path / "bin", tmp_path / "marks"
    bin_dir.mkdir()
    marks.mkdir()
    (bin_dir / "python").write_text(FAKE_PYTHON)
    (bin_dir / "python").chmod(0o755)
    env = {
        **os.environ,
        "PATH": f"{bin_dir}:{os.environ['PATH']}",
        "MARKS": str(marks),
        "PORT": "12345",
    }
    args = ["bash", SCRIPT, "2", "configs/quickstart.py", str(tmp_path / "run")]
    launcher = subprocess.Popen(args, env=env, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 20
    while len(list(marks.glob("started-*"))) < 2:
        assert time.monotonic() < deadline and launcher.poll() is None
        time.sleep(0.05)
    launcher.send_signal(signal.SIGTERM)
    _, stderr = launcher.communicate(timeout=30)
    assert launcher.returncode == 143, stderr
    stopped = [p.read_text() for p in marks.glob("term-*")]  # written before each exited
    assert stopped == ["stopped\n"] * 2, stderr
