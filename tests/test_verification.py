"""A finished stage is verified before it is skipped, through `python -m pnoc_jax.main` on copies
of the shared tiny run: outputs deleted, emptied or truncated make their stage run again, and
the finished stages that read it run again in fresh folders (the old ones kept as stale
folders); a damaged input of a stage run alone, or checkpoints that cannot be restored, are one
line naming the file or stage. Nothing else is rewritten."""

import json
import os
import shutil

import pytest

from pnoc_jax import pipeline
from pnoc_jax.core import artifacts
from tests.conftest import as_flags, one_error_line, run_main, tiny_run_overrides

pytestmark = pytest.mark.slow  # copies of the shared tiny run (built once per session, minutes)

# The stages of the tiny run that read what the damages below touch, directly or through one
# another (random_walk reads train_affinity; the pseudo-label segmentation reads random_walk).
REPAIRED = ("eval_cam", "train_affinity")
READERS = (
    "random_walk", "eval_pseudo_labels",
    "train_segmentation", "infer_segmentation", "eval_segmentation",
)  # fmt: skip


@pytest.fixture
def damaged_copy(tiny_run, tmp_path):
    config, workdir = tiny_run
    copy = str(tmp_path / "run")
    shutil.copytree(workdir, copy, symlinks=True)
    return config, copy


def _truncate(path: str, size: int) -> None:
    with open(path, "r+b") as f:
        f.truncate(size)


def _files(folder: str) -> dict[str, tuple[bytes, int]]:
    """{path below folder: (bytes, mtime in ns)} of every file of the folder."""
    found = {}
    for root, _, names in os.walk(folder):
        for name in names:
            path = os.path.join(root, name)
            with open(path, "rb") as f:
                found[os.path.relpath(path, folder)] = (f.read(), os.stat(path).st_mtime_ns)
    return found


def _main(config, workdir: str, stages: tuple[str, ...] | None = None):
    overrides = tiny_run_overrides(config.data.data_dir, *([stages] if stages else []))
    return run_main("--workdir", workdir, *as_flags(overrides))


def test_damaged_outputs_rerun_their_stage_and_the_stages_that_read_it(damaged_copy):
    """Five damages in one finished run, one rerun: each damaged stage runs again (training from
    its checkpoints, past a damaged latest one), the stages reading one of them run again in
    fresh folders, the old folders are kept, every other stage is skipped untouched."""
    config, workdir = damaged_copy
    untouched = [n for n in config.stages if n not in REPAIRED + READERS]
    before = {name: _files(artifacts.stage_dir(workdir, name)) for name in config.stages}
    best = artifacts.segmentation_weights_file(workdir, "train_segmentation")
    os.remove(best)
    aff = artifacts.weights_file(workdir, "train_affinity", "aff")
    _truncate(aff, 0)
    affinity_ckpt = artifacts.checkpoint_dir(workdir, "train_affinity")
    assert sorted(os.listdir(affinity_ckpt)) == ["2", "3"]
    os.remove(os.path.join(affinity_ckpt, "3", "aff", "_METADATA"))  # its latest checkpoint too
    os.remove(artifacts.metrics_file(workdir, "eval_cam"))
    pseudo = artifacts.pseudo_label_dir(workdir, "val")
    png = os.path.join(pseudo, sorted(os.listdir(pseudo))[0])
    _truncate(png, os.path.getsize(png) // 2)
    for name in ("train_segmentation", "train_affinity", "eval_cam", "random_walk"):
        assert pipeline.verify(name, config, workdir), name
    damaged = {name: _files(artifacts.stage_dir(workdir, name)) for name in READERS}

    result = _main(config, workdir)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    log = result.stderr
    assert "stage eval_cam: finished, but its outputs are missing or damaged " in log
    assert "eval_cam/metrics.json): running it again" in log
    assert f"({aff} (empty)): running it again" in log
    assert "train_affinity: resuming from step 2, the newest checkpoint that restores" in log
    assert os.path.isdir(f"{affinity_ckpt}.damaged-3")
    for reader, read in (("random_walk", "train_affinity"), ("eval_pseudo_labels", "random_walk")):
        assert (
            f"stage {reader}: its input stage {read} was made again after it ran: running it "
            "again in a fresh folder" in log
        )
    for name in untouched:
        assert f"stage {name}: finished with this config" in log, name
        assert _files(artifacts.stage_dir(workdir, name)) == before[name], name  # not rewritten
    for name in READERS:  # the old folder kept as it was, a new one made
        assert f"stage {name}: its input stage " in log, name
        assert _files(artifacts.stage_dir(workdir, name) + ".stale-1") == damaged[name], name
        assert f"{name}.stale-1 (" in result.stdout, name  # listed in the summary
    for name in config.stages:  # a next run skips every stage
        assert pipeline.is_finished(workdir, name, config), name
        assert not pipeline.verify(name, config, workdir), name
    after = {name: _files(artifacts.stage_dir(workdir, name)) for name in READERS + REPAIRED}
    # The same inputs give the same outputs: the repaired files (aff.npz trained again from
    # step 2 as the uninterrupted run) and the readers' results.
    assert (
        after["train_affinity"]["weights/aff.npz"][0]
        == before["train_affinity"]["weights/aff.npz"][0]
    )
    for name in ("eval_cam", "eval_pseudo_labels", "eval_segmentation"):
        new, old = after[name]["metrics.json"][0], before[name]["metrics.json"][0]
        assert json.loads(new) == json.loads(old), name
    png_name = os.path.relpath(png, artifacts.stage_dir(workdir, "random_walk"))
    assert after["random_walk"][png_name][0] == before["random_walk"][png_name][0]  # whole
    assert os.path.exists(best)


def test_a_stage_whose_checkpoints_all_fail_to_restore_stops_in_one_line(damaged_copy):
    """train_oc interrupted, and none of its checkpoints restores: one line naming the folder;
    its weights and checkpoints are left as they are. (A damaged latest checkpoint alone falls
    back to the one before it: the test above, through train_affinity.)"""
    config, workdir = damaged_copy
    ckpt = artifacts.checkpoint_dir(workdir, "train_oc")
    for step in os.listdir(ckpt):
        shutil.rmtree(os.path.join(ckpt, step, "f", "d"))
    os.remove(artifacts.done_file(workdir, "train_oc"))
    weights = os.path.dirname(artifacts.weights_file(workdir, "train_oc"))
    finished = {folder: _files(folder) for folder in (ckpt, weights)}
    result = _main(config, workdir, ("train_oc",))
    assert result.returncode == 1, result.stderr[-3000:]
    assert one_error_line(result).endswith(
        f"train_oc: no checkpoint in {ckpt} can be restored (steps 3, 2 are damaged); delete "
        f"that folder to train the stage from the start"
    )
    assert {folder: _files(folder) for folder in (ckpt, weights)} == finished


def test_a_damaged_input_of_a_stage_run_alone_names_its_producer(damaged_copy):
    """Damaged weights, then a truncated per-image score file, read by a stage run alone: one
    line naming the file and the stage to add; nothing is touched."""
    config, workdir = damaged_copy
    oc_weights = artifacts.weights_file(workdir, "train_oc")
    _truncate(oc_weights, 10)
    os.remove(artifacts.done_file(workdir, "train_cam"))  # train_cam runs; train_oc not in this run
    cam = _files(artifacts.stage_dir(workdir, "train_cam"))
    result = _main(config, workdir, ("train_cam",))
    assert result.returncode == 1, result.stderr[-3000:]
    assert one_error_line(result).endswith(
        f"stage train_cam reads stage train_oc, whose outputs are missing or damaged ({oc_weights}"
        f" (truncated)); add 'train_oc' to config.stages before 'train_cam' to redo them"
    )
    assert _files(artifacts.stage_dir(workdir, "train_cam")) == cam
    assert os.path.getsize(oc_weights) == 10  # the user's file is left as it is
    cams = artifacts.cam_dir(workdir, "val")
    score = os.path.join(cams, sorted(os.listdir(cams))[3])
    _truncate(score, os.path.getsize(score) // 2)
    os.remove(artifacts.done_file(workdir, "eval_cam"))
    result = _main(config, workdir, ("eval_cam",))
    assert result.returncode == 1, result.stderr[-3000:]
    assert one_error_line(result).endswith(
        f"stage eval_cam reads stage infer_cam, whose outputs are missing or damaged ({score}"
        f" (truncated)); add 'infer_cam' to config.stages before 'eval_cam' to redo them"
    )
