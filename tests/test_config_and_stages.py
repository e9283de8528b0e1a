"""Config parsing and validation before compute, and the stage runner's skip/rerun logic."""

import os
import subprocess
import sys

import pytest

from pnoc_jax import config_lib, stages

ROOT = os.path.join(os.path.dirname(__file__), "..")


def test_parse_arg_types_and_unknown():
    args = config_lib.parse_arg("strategy=pnoc,epochs=3,fast", strategy="cam", epochs=1, fast=False)
    assert (args.strategy, args.epochs, args.fast) == ("pnoc", 3, True)
    with pytest.raises(ValueError, match="unknown"):
        config_lib.parse_arg("bogus=1", strategy="cam")


def test_validate_rejects_bad_values(tiny_config):
    config_lib.validate(tiny_config, device_count=8)
    tiny_config.train.batch_size = 12
    with pytest.raises(ValueError, match=r"config.train.batch_size=12 .* device count \(8\)"):
        config_lib.validate(tiny_config, device_count=8)
    tiny_config.train.batch_size = 8
    tiny_config.train.strategy = "magic"
    with pytest.raises(ValueError, match="strategy='magic'"):
        config_lib.validate(tiny_config, device_count=8)
    tiny_config.train.strategy = "cam"
    tiny_config.affinity.momentum = 1.5
    with pytest.raises(ValueError, match=r"config.affinity.momentum=1.5: expected in \[0, 1\)"):
        config_lib.validate(tiny_config, device_count=8)
    tiny_config.affinity.momentum = 0.9
    tiny_config.stages = ("train_cam", "nope")
    with pytest.raises(ValueError, match="unknown stage 'nope'"):
        config_lib.validate(tiny_config, device_count=8)


def _main(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=8"}
    return subprocess.run(
        [sys.executable, "-m", "pnoc_jax.main", "--config", "configs/quickstart.py", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_main_rejects_unknown_key_and_bad_batch_before_compute(tmp_path):
    result = _main("--workdir", str(tmp_path), "--config.train.bogus=1")
    assert result.returncode != 0
    assert "bogus" in result.stderr
    result = _main("--workdir", str(tmp_path), "--config.train.batch_size=12")
    assert result.returncode != 0
    assert "batch_size=12" in result.stderr and "device count (8)" in result.stderr
    assert not os.path.exists(tmp_path / "train_cam")  # nothing ran


def test_fingerprints_propagate_downstream(tiny_config):
    before = {name: stages.stage_fingerprint(name, tiny_config) for name in stages.STAGES}
    tiny_config.eval.thresholds = (0.1, 0.2)
    after = {name: stages.stage_fingerprint(name, tiny_config) for name in stages.STAGES}
    assert before["train_cam"] == after["train_cam"] and before["infer_cam"] == after["infer_cam"]
    assert before["eval_cam"] != after["eval_cam"]
    tiny_config.train.lr = 0.07
    again = {name: stages.stage_fingerprint(name, tiny_config) for name in stages.STAGES}
    assert again["train_cam"] != after["train_cam"]
    assert again["infer_cam"] != after["infer_cam"] and again["eval_cam"] != after["eval_cam"]


def test_compare_sub_config_reads_oc_only_when_needed_and_infers_the_eval_split():
    from pnoc_jax.cam import compare

    config = config_lib.synthetic_config("cam")  # f's backbone starts from the OC
    for strategy in ("cam", "pnoc"):
        sub = compare.sub_config(config, 2, strategy, "/oc/ckpt")
        assert sub.seed == 2 and sub.train.strategy == strategy
        assert sub.train.oc_checkpoint == "/oc/ckpt"
        assert sub.infer.splits == (config.eval.split,)
    config.train.init_backbone_from = ""
    assert compare.sub_config(config, 0, "cam", "/oc/ckpt").train.oc_checkpoint == ""
    assert compare.sub_config(config, 0, "poc", "/oc/ckpt").train.oc_checkpoint == "/oc/ckpt"
