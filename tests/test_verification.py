"""A finished stage is verified before it is skipped: outputs deleted, emptied or truncated
after the run make the stage run again (and only that stage), on the shared tiny run."""

import os
import shutil

import pytest

from pnoc_jax import pipeline
from pnoc_jax.core import artifacts, fileio
from pnoc_jax.core.errors import UserError

pytestmark = pytest.mark.slow  # copies of the shared tiny run (built once per session, minutes)


@pytest.fixture
def damaged_copy(tiny_run, tmp_path):
    config, workdir = tiny_run
    copy = str(tmp_path / "run")
    shutil.copytree(workdir, copy, symlinks=True)
    return config, copy


def _truncate(path: str, size: int) -> None:
    with open(path, "r+b") as f:
        f.truncate(size)


def test_damaged_outputs_rerun_their_stage_and_nothing_else(damaged_copy, monkeypatch):
    config, workdir = damaged_copy
    os.remove(artifacts.segmentation_weights_file(workdir, "train_segmentation"))
    _truncate(artifacts.weights_file(workdir, "train_affinity", "aff"), 0)
    os.remove(artifacts.metrics_file(workdir, "eval_cam"))
    pseudo = artifacts.pseudo_label_dir(workdir, "val")
    first = os.path.join(pseudo, sorted(os.listdir(pseudo))[0])
    _truncate(first, os.path.getsize(first) // 2)
    for name in ("train_segmentation", "train_affinity", "eval_cam", "random_walk"):
        assert pipeline.verify(name, config, workdir), name
    ran = []
    run_stage = pipeline.run_stage
    monkeypatch.setattr(
        pipeline, "run_stage", lambda n, c, w, d: ran.append(n) if run_stage(n, c, w, d) else None
    )
    pipeline.run_stages(config, workdir)
    assert ran == ["eval_cam", "train_affinity", "random_walk", "train_segmentation"]
    assert all(not pipeline.verify(name, config, workdir) for name in config.stages)
    assert os.path.getsize(first) > 100
    ran.clear()
    pipeline.run_stages(config, workdir)
    assert ran == []


def test_a_damaged_input_of_a_stage_run_alone_names_its_producer(damaged_copy):
    config, workdir = damaged_copy
    _truncate(artifacts.weights_file(workdir, "train_oc"), 10)
    os.remove(artifacts.done_file(workdir, "train_cam"))  # train_cam runs; train_oc not in this run
    with pytest.raises(pipeline.StageError, match=r"reads stage train_oc, whose outputs are "
                       r"missing or damaged \(.*train_oc/weights/f.npz \(truncated\)\); add "
                       r"'train_oc' to config.stages"):  # fmt: skip
        pipeline.run_stage("train_cam", config, workdir)


def test_a_damaged_checkpoint_falls_back_to_the_previous_one(damaged_copy, caplog):
    config, workdir = damaged_copy
    ckpt = artifacts.checkpoint_dir(workdir, "train_oc")
    assert sorted(os.listdir(ckpt)) == ["2", "3"]
    weights_file = artifacts.weights_file(workdir, "train_oc")
    finished = fileio.read_bytes(weights_file)
    os.remove(os.path.join(ckpt, "3", "f", "_METADATA"))
    os.remove(artifacts.done_file(workdir, "train_oc"))
    os.remove(weights_file)
    assert pipeline.run_stage("train_oc", config, workdir)  # step 3 trained again from step 2
    assert "resuming from step 2, the newest checkpoint that restores" in caplog.text
    assert fileio.read_bytes(weights_file) == finished  # as the uninterrupted run
    assert os.path.isdir(f"{ckpt}.damaged-3")
    for step in os.listdir(ckpt):
        shutil.rmtree(os.path.join(ckpt, step, "f", "d"))
    os.remove(artifacts.done_file(workdir, "train_oc"))
    with pytest.raises(UserError, match=rf"train_oc: no checkpoint in {ckpt} can be restored "
                       r"\(steps 3, 2 are damaged\); delete that folder"):  # fmt: skip
        pipeline.run_stage("train_oc", config, workdir)
