"""`python -m pnoc_jax.main` as a person meets it: one clear line for every mistake of the
command line, the config, the workdir or the machine; readable logs; a useful --help."""

import os
import pathlib
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time

import pytest

from tests.conftest import (
    MAIN_ENV,
    REPO_ROOT,
    as_flags,
    one_error_line,
    run_main,
    tiny_run_overrides,
)


@pytest.mark.parametrize(
    ("args", "config", "expected"),
    [
        (["--config.train.lrr=0.1"], None, "--config.train.lrr: no such config key; did you mean "
         "train.lr"),
        (["--config.train.lr=abc"], None, "--config.train.lr=abc: could not convert"),
        (["--config.model.backbone=tinyy"], None, "config.model.backbone='tinyy': expected one of"),
        (["--config.runtime.input_workers=-2"], None, "config.runtime.input_workers=-2"),
        (["--config.train.batch_size=12"], None, "batch_size=12: expected a multiple of the "
         "device count (8)"),
        (["stray"], None, "unexpected arguments ['stray']"),
        ([], "configs/nope.py", "config file 'configs/nope.py' not found; configs: "),
        ([], "configs/quickstart.py:bogus=1", "config argument 'bogus' unknown"),
        ([], "configs/quickstart.py:epochs", "config argument 'epochs' needs a value, e.g. "),
        (["--config.train.lr=inf"], None, "config.train.lr=inf: expected a finite number > 0"),
        (["--workdir="], None, "--workdir: give the folder for the run's outputs"),
        ([], "def get_config(:\n", "broken.py: line 1: invalid syntax"),
        ([], "x = 1\n", "broken.py: the file defines no get_config(arg=None)"),
        ([], "def get_config(arg=None):\n    return {}\n", "get_config() returned a dict, "
         "expected an ml_collections.ConfigDict"),
        ([], "def get_config(arg=None):\n    raise RuntimeError('no GPU here')\n", "broken.py: "
         "get_config raised RuntimeError: no GPU here"),
        (["--config.runtime.keep_stale=0"], None, "--config.runtime.keep_stale: no such config "
         "key"),
    ],
)  # fmt: skip
def test_command_line_mistakes_are_one_line(tmp_path, args, config, expected):
    workdir = str(tmp_path / "run")
    if config and not config.startswith("configs/"):  # the text of a broken config file
        (tmp_path / "broken.py").write_text(config)
        config = str(tmp_path / "broken.py")
    result = run_main("--workdir", workdir, *args, config=config or "configs/quickstart.py")
    assert result.returncode == 2
    assert expected in one_error_line(result)
    assert not os.path.exists(workdir)  # nothing on disk changed


def test_a_run_without_a_config_is_one_line(tmp_path):
    workdir = str(tmp_path / "run")
    command = [sys.executable, "-m", "pnoc_jax.main", "--workdir", workdir]
    result = subprocess.run(
        command, cwd=REPO_ROOT, env=MAIN_ENV, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 2
    assert "--config: give a config file" in one_error_line(result)
    assert not os.path.exists(workdir)


def test_workdir_and_record_problems_are_one_line(tmp_path, synthetic_data_dir):
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("")
    result = run_main("--workdir", str(not_a_dir))
    assert result.returncode == 1
    assert "exists and is not a directory" in one_error_line(result)

    workdir = tmp_path / "run"
    (workdir / "eval_cam").mkdir(parents=True)
    (workdir / "eval_cam" / "DONE.json").write_text("{not json")
    args = (
        "--workdir", str(workdir),
        f"--config.data.data_dir={synthetic_data_dir}",
        "--config.stages=('eval_cam',)",
    )  # fmt: skip
    result = run_main(*args)
    assert result.returncode == 1
    assert "eval_cam/DONE.json is not valid JSON" in one_error_line(result)
    (workdir / "eval_cam" / "DONE.json").write_text('["stage", "fingerprint"]')
    result = run_main(*args)
    assert result.returncode == 1
    assert "eval_cam/DONE.json holds a JSON list, not the object" in one_error_line(result)
    (workdir / ".lock").unlink()
    (workdir / ".lock").mkdir()
    result = run_main(*args)
    assert result.returncode == 1
    assert f"{workdir}/.lock is a folder, where the run keeps its lock" in one_error_line(result)


def test_a_training_split_smaller_than_a_batch_stops_before_the_first_stage(
    tmp_path, synthetic_data_dir
):
    result = run_main(
        "--workdir", str(tmp_path),
        f"--config.data.data_dir={synthetic_data_dir}",
        "--config.stages=('train_oc', 'train_cam')",
        "--config.train.split=val", "--config.train.batch_size=256",  # val has 200 images
    )  # fmt: skip
    assert result.returncode == 2
    assert re.search(
        r"config.train.batch_size=256: stage train_cam trains on split 'val' "
        r"\(config.train.split\), which has \d+ images with a class, fewer than one batch",
        one_error_line(result),
    )
    assert os.listdir(tmp_path) == [".lock"]  # train_oc did not run


def test_remove_stale_lists_what_goes_and_needs_no_config(tmp_path):
    (tmp_path / "eval_cam.stale-1").mkdir()
    (tmp_path / "eval_cam.stale-1" / "metrics.json").write_text("{}")
    (tmp_path / "eval_cam").mkdir()
    command = [sys.executable, "-m", "pnoc_jax.main", "--workdir", str(tmp_path), "--remove_stale"]
    result = subprocess.run(
        command, cwd=REPO_ROOT, env=MAIN_ENV, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"removed {tmp_path}/eval_cam.stale-1 (2 B)\n"
    assert result.stderr == ""  # no backend probing line
    assert sorted(os.listdir(tmp_path)) == [".lock", "eval_cam"]


def test_help_lists_configs_stages_and_strategies():
    result = subprocess.run(
        [sys.executable, "-m", "pnoc_jax.main", "--help"],
        cwd=REPO_ROOT, env=MAIN_ENV, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    text = result.stdout + result.stderr
    assert "configs/quickstart.py" in text and "configs/pnoc_voc.py" in text
    assert "train_oc, train_cam, infer_cam" in text and "eval_pseudo_labels" in text
    assert "cam, puzzle, occse, poc, pnoc" in text


def _in_small_filesystem(tmp_path, size: str, options: str, *args: str):
    """Runs main with its workdir on a tmpfs of `size` mounted in a private mount namespace."""
    if shutil.which("unshare") is None:
        pytest.skip("needs unshare (util-linux) to mount a small file system")
    mount = tmp_path / "mnt"
    mount.mkdir()
    command = shlex.join(
        [sys.executable, "-m", "pnoc_jax.main", "--config", "configs/quickstart.py",
         "--workdir", str(mount / "run"), *args]
    )  # fmt: skip
    script = f"mount -t tmpfs -o size={size},{options} tmpfs {mount} && exec {command}"
    probe = subprocess.run(
        ["unshare", "--user", "--map-root-user", "--mount", "sh", "-c", f"mount -t tmpfs tmpfs "
         f"{mount}"], capture_output=True
    )  # fmt: skip
    if probe.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs in a user namespace here: {probe.stderr!r}")
    return subprocess.run(
        ["unshare", "--user", "--map-root-user", "--mount", "sh", "-c", script],
        cwd=REPO_ROOT, env=MAIN_ENV, capture_output=True, text=True, timeout=300,
    )  # fmt: skip


def test_read_only_workdir_is_one_line(tmp_path):
    result = _in_small_filesystem(tmp_path, "1m", "ro")
    assert result.returncode == 1
    assert "read-only" in one_error_line(result)


@pytest.mark.slow
def test_full_disk_during_a_checkpoint_is_one_line(tmp_path, synthetic_data_dir):
    result = _in_small_filesystem(
        tmp_path, "1m", "rw",
        f"--config.data.data_dir={synthetic_data_dir}",
        "--config.stages=('train_oc',)",
        "--config.oc.steps=2", "--config.runtime.ckpt_every=1", "--config.runtime.log_every=1",
        "--config.data.image_size=32", "--config.oc.min_size=32", "--config.oc.max_size=48",
    )  # fmt: skip
    assert result.returncode == 1, result.stderr
    line = one_error_line(result)
    # The checkpoint fills the disk; whichever write of the stage notices first is named.
    assert "the disk is full writing " in line and "/mnt/run/train_oc/" in line
    assert "training resumes from its last checkpoint" in line
    assert len(result.stderr.splitlines()) < 40  # not 1,600 lines of threads' tracebacks
    # A log file, not a terminal: plain progress lines, no bars, no backend probing noise.
    assert "\r" not in result.stderr
    assert "train_oc: 1/2 (50%)" in result.stderr
    assert "Unable to initialize backend" not in result.stderr


def _signalled_main(
    tmp_path, workdir, overrides: dict, started: str, signums: tuple[int, ...]
) -> subprocess.CompletedProcess:
    """Runs main, sends `signums` once `started` is in its log (each one after the previous was
    taken: signals coalesce), and waits for it to exit."""
    command = [sys.executable, "-m", "pnoc_jax.main", "--config", "configs/quickstart.py",
               "--workdir", str(workdir), *as_flags(overrides)]  # fmt: skip
    log = tmp_path / "stderr.log"
    with open(log, "w") as err:
        process = subprocess.Popen(
            command, cwd=REPO_ROOT, env=MAIN_ENV, stdout=subprocess.DEVNULL, stderr=err
        )
    deadline, waited = time.time() + 240, started
    for signum in signums:
        while waited not in log.read_text() and time.time() < deadline:
            assert process.poll() is None, log.read_text()[-3000:]
            time.sleep(0.01)
        process.send_signal(signum)
        waited = f"{signal.Signals(signum).name} received"
    process.wait(timeout=120)
    return subprocess.CompletedProcess(command, process.returncode, "", log.read_text())


@pytest.mark.slow  # a training run started and stopped
def test_a_second_ctrl_c_is_one_line(tmp_path, synthetic_data_dir):
    """Two Ctrl-C's during training: exit 130 with one line, no traceback."""
    overrides = {
        **tiny_run_overrides(synthetic_data_dir, ("train_oc",)),
        "oc.steps": 5000,
        "runtime.log_every": 1,
    }
    result = _signalled_main(
        tmp_path, tmp_path / "run", overrides, "train_oc: 1/", (signal.SIGINT, signal.SIGINT)
    )
    assert result.returncode == 130, result.stderr[-3000:]
    assert "stopped by a second Ctrl-C" in one_error_line(result)


@pytest.mark.slow  # the shared tiny run (built once per session), two launches
def test_a_per_image_stage_stops_on_ctrl_c_and_resumes(tiny_run, tmp_path):
    """DeepLab's inference, its folder a symlink, run again without the CRF: the folder moves
    aside as the link (its target untouched); a Ctrl-C finishes the images in flight, one
    "stopped" line, exit 130, no traceback, no temporary file; the next run does the rest, each
    prediction equal to the uninterrupted run's, and its summary keeps every other stage's row
    and lists the stale folder. (SIGTERM, on 2 processes: tests/test_multiprocess.py.)"""
    config, finished = tiny_run
    finished, workdir = pathlib.Path(finished), tmp_path / "run"
    shutil.copytree(finished, workdir, symlinks=True)
    stage, elsewhere = "infer_segmentation", tmp_path / "elsewhere"
    (workdir / stage).rename(elsewhere)
    (workdir / stage).symlink_to(elsewhere)
    before = {p: p.read_bytes() for p in elsewhere.rglob("*") if p.is_file()}
    overrides = {
        **tiny_run_overrides(config.data.data_dir, (stage,)),
        "segmentation_infer.crf_iterations": 0,
        "runtime.predict_batch_size": 1,
    }
    result = _signalled_main(tmp_path, workdir, overrides, f"{stage} val: 1/", (signal.SIGINT,))
    assert result.returncode == 130, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    assert re.search(
        rf"{stage}: after \d+ more image\(s\) of val: stopped by SIGINT", result.stderr
    )
    assert not (workdir / stage / "DONE.json").exists()
    assert not [p for p in (workdir / stage).rglob("*") if ".tmp" in p.name]
    assert (workdir / f"{stage}.stale-1").resolve() == elsewhere
    result = run_main("--workdir", str(workdir), *as_flags(overrides))
    assert result.returncode == 0, result.stderr[-3000:]
    done = re.search(rf"{stage} val: (\d+) computed, (\d+) already there", result.stderr)
    assert done and int(done[1]) > 0 and int(done[2]) > 0, result.stderr[-3000:]
    plain = sorted((finished / stage / "val_nocrf").glob("*.png"))
    assert sorted(p.name for p in (workdir / stage / "val").glob("*.png")) == [
        p.name for p in plain
    ]
    for path in plain:  # without the CRF, as the first run's plain predictions
        assert (workdir / stage / "val" / path.name).read_bytes() == path.read_bytes(), path
    assert {p: p.read_bytes() for p in elsewhere.rglob("*") if p.is_file()} == before
    summary = (workdir / "summary.md").read_text()
    for name in ("eval_cam", "eval_pseudo_labels", "train_segmentation", "eval_segmentation_gt"):
        assert f"| {name} | " in summary, name
    assert f"{stage}.stale-1 (" in summary and "--remove_stale" in summary


@pytest.mark.slow  # the shared tiny run (built once per session)
def test_a_file_in_place_of_a_weights_folder_is_found_and_one_line(tiny_run, tmp_path):
    """`train_segmentation/weights/` replaced by a file: the finished stage is found damaged
    and runs again; writing its weights then stops on the file in the way, in one line naming
    it, and the file (the user's) is left alone."""
    config, finished = tiny_run
    workdir = tmp_path / "run"
    shutil.copytree(finished, workdir, symlinks=True)
    folder = workdir / "train_segmentation" / "weights"
    shutil.rmtree(folder)
    folder.write_text("mine")
    overrides = tiny_run_overrides(config.data.data_dir)
    result = run_main("--workdir", str(workdir), *as_flags(overrides))
    assert "a file where a folder should be" in result.stderr
    assert result.returncode == 1, result.stderr[-3000:]
    line = one_error_line(result)
    assert "a file is in the way" in line and "weights" in line
    assert folder.read_text() == "mine"
    assert "stage train_oc: finished with this config" in result.stderr
