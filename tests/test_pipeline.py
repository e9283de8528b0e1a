"""Config parsing, validation of every key before compute, fingerprints, and the stage graph."""

import os

import ml_collections
import pytest

from configs import common
from pnoc_jax import config_lib, pipeline
from pnoc_jax.experiments import strategies as compare_strategies

TOPOLOGY = config_lib.Topology(device_count=8)


def test_parse_arg_types_and_unknown():
    args = config_lib.parse_arg("strategy=pnoc,epochs=3,fast", strategy="cam", epochs=1, fast=False)
    assert (args.strategy, args.epochs, args.fast) == ("pnoc", 3, True)
    with pytest.raises(ValueError, match="unknown"):
        config_lib.parse_arg("bogus=1", strategy="cam")
    with pytest.raises(ValueError, match=r"'epochs' needs a value, e\.g\. epochs=1"):
        config_lib.parse_arg("epochs", epochs=1)
    with pytest.raises(ValueError, match="epochs='x': expected int"):
        config_lib.parse_arg("epochs=x", epochs=1)


# Every leaf of every section a stage reads, with a value that cannot work. Paths and booleans
# are the only leaves left out (any string is a path; the locked config types booleans).
BAD_VALUES = {
    "seed": -1,
    "data.name": "vocc",
    "data.image_size": 100,
    "data.manual_dir": "/no/such/folder",
    "model.backbone": "tinyy",
    "model.output_stride": 12,
    "model.pretrained": "/no/such/file.npz",
    "infer.splits": ("train", "tset"),
    "infer.scales": (1.0, -0.5),
    "infer.max_image_size": 0,
    "infer.weights_from": "train_rw",
    "eval.split": "test",
    "eval.thresholds": (0.3, 0.2),
    "eval.crf_iterations": -1,
    "eval.crf_gt_prob": 1.0,
    "affinity_labels.split": "test",
    "affinity_labels.fg_threshold": 1.5,
    "affinity_labels.bg_threshold": -0.1,
    "affinity_labels.saliency_dir": "/no/such/folder",
    "affinity_labels.saliency_threshold": 2.0,
    "affinity_labels.crf_iterations": -1,
    "affinity_labels.crf_gt_prob": 1.0,
    "affinity.backbone": "vgg",
    "affinity.output_stride": 4,
    "affinity.backbone_weights": "imagenet",
    "affinity.batch_size": 12,
    "affinity.epochs": -1,
    "affinity.steps": -3,
    "affinity.lr": 0.0,
    "affinity.momentum": 1.0,
    "affinity.weight_decay": -1e-4,
    "affinity.poly_power": -1.0,
    "affinity.crop_size": 50,
    "affinity.min_size": 0,
    "affinity.max_size": 10,
    "affinity.radius": 1,
    "rw.splits": ("test",),
    "rw.beta": 0.0,
    "rw.exp_times": -1,
    "rw.radius": 1,
    "rw.bg_threshold": 1.5,
    "rw.crf_iterations": -1,
    "rw.crf_gt_prob": 0.0,
    "rw.max_image_size": 0,
    "compare.strategies": ("cam", "magic"),
    "compare.seeds": (0, 0),
    "analysis.groups": ("animals=ant,wolf",),
    "rw.bg_threshold_split": "test",
    "runtime.log_every": 0,
    "runtime.ckpt_every": 0,
    "runtime.num_workers": -1,
    "runtime.predict_batch_size": 0,
    "runtime.input_workers": -2,
    # saliency
    "affinity_labels.saliency": "infer_cam",
    "saliency.method": "ccamx",
    "saliency.split": "test",
    "saliency.backbone": "vgg",
    "saliency.output_stride": 32,
    "saliency.backbone_weights": "imagenet",
    "saliency.pretrained": "/no/such/file.npz",
    "saliency.batch_size": 12,
    "saliency.accumulate_steps": 0,
    "saliency.epochs": -1,
    "saliency.steps": -1,
    "saliency.lr": 0.0,
    "saliency.momentum": 1.0,
    "saliency.weight_decay": -1.0,
    "saliency.poly_power": -1.0,
    "saliency.lr_mult": (1.0, 2.0),
    "saliency.resize_size": 0,
    "saliency.crop_size": 8,
    "saliency.alpha": -0.25,
    "saliency.hint_weight": -1.0,
    "saliency.hint_threshold": 1.5,
    "saliency.label_smoothing": 1.0,
    "saliency.dtype": "float16",
    "saliency_infer.splits": ("tset",),
    "saliency_infer.scales": (1.0, 0.0),
    "saliency_infer.max_image_size": 0,
    "saliency_infer.mask_threshold": -0.2,
    "saliency_infer.crf_iterations": -1,
    "saliency_infer.crf_gt_prob": 1.0,
    "detector.split": "test",
    "detector.backbone": "vgg",
    "detector.backbone_weights": "imagenet",
    "detector.pretrained": "/no/such/file.npz",
    "detector.head_divisor": 3,
    "detector.batch_size": 12,
    "detector.accumulate_steps": 0,
    "detector.epochs": -1,
    "detector.steps": -1,
    "detector.lr": 0.0,
    "detector.weight_decay": -1.0,
    "detector.max_image_size": 0,
    "detector.input_scale": 0.0,
    "detector.dtype": "float16",
    "detector_infer.splits": ("tset",),
    "detector_infer.weights": "/no/such/file.npz",
    "saliency_eval.sources": ("infer_saliency", "infer_cam"),
    "compare_saliency.seeds": (1, 1),
    # segmentation
    "segmentation.model": "deeplabv4",
    "segmentation.backbone": "vgg16",
    "segmentation.output_stride": 32,
    "segmentation.atrous_rates": (6, 12),
    "segmentation.head_channels": 30,
    "segmentation.low_level_channels": 0,
    "segmentation.backbone_weights": "imagenet",
    "segmentation.pretrained": "/no/such/file.npz",
    "segmentation.split": "tset",
    "segmentation.val_split": "train",  # no pseudo-labels there: config.rw.splits is (val,)
    "segmentation.validate_every": 0,
    "segmentation.batch_size": 12,
    "segmentation.epochs": -1,
    "segmentation.steps": -2,
    "segmentation.lr": 0.0,
    "segmentation.momentum": 1.0,
    "segmentation.weight_decay": -4e-5,
    "segmentation.poly_power": -0.9,
    "segmentation.lr_mult": (1.0, 2.0),
    "segmentation.label_smoothing": 1.0,
    "segmentation.dtype": "float16",
    "segmentation.augment": "cutmix",
    "segmentation.crop_size": 8,
    "segmentation.min_size": 0,
    "segmentation.max_size": 1,
    "segmentation_infer.splits": ("val", "tset"),
    "segmentation_infer.scales": (1.0, 0.0),
    "segmentation_infer.max_image_size": 0,
    "segmentation_infer.crf_iterations": -1,
}
TRAIN_BAD_VALUES = {
    "strategy": "magic",
    "split": "test",
    "batch_size": 12,
    "epochs": -1,
    "steps": -5,
    "lr": -0.1,
    "momentum": 1.0,
    "weight_decay": -1.0,
    "poly_power": -0.9,
    "lr_mult": (1.0, 2.0, 10.0),
    "label_smoothing": 1.0,
    "accumulate_steps": 0,
    "dtype": "float16",
    "augment": "mixup",
    "min_size": 0,
    "max_size": 1,
    "oc_weights": "/no/such/file.npz",
    "init_backbone_from": "imagenet",
    "noc_lr_mult": 0.0,
    "strategy_args.re_start": -1.0,
    "strategy_args.re_end": -1.0,
    "strategy_args.re_fraction": 0.0,
    "strategy_args.cse_start": -1.0,
    "strategy_args.cse_end": -1.0,
    "strategy_args.cse_fraction": 1.5,
    "strategy_args.noc_start": -1.0,
    "strategy_args.noc_end": -1.0,
    "strategy_args.noc_fraction": 0.0,
    "strategy_args.noc_threshold": 1.2,
    "strategy_args.noc_every": 0,
}
for _section in ("oc", "train"):
    BAD_VALUES.update({f"{_section}.{k}": v for k, v in TRAIN_BAD_VALUES.items()})
UNCHECKED = {"data.data_dir"}  # any folder; created on first use


def _leaves(config: ml_collections.ConfigDict, prefix: str = "") -> dict:
    out = {}
    for key, value in config.items():
        if isinstance(value, ml_collections.ConfigDict):
            out.update(_leaves(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def _all_stages_config(tiny_config):
    config = tiny_config
    config.stages = (*pipeline.STAGES,)
    config.rw.splits = ("val",)
    config.affinity_labels.split = "val"
    config.infer.splits = ("train", "val")
    config.segmentation.update(split="val", val_split="val")  # splits with pseudo-labels
    return config


def test_every_key_is_checked():
    leaves = _leaves(config_lib.base_config())
    checked = {
        k for k, v in leaves.items() if not isinstance(v, bool) and k != "stages"
    } - UNCHECKED
    assert checked == set(BAD_VALUES), sorted(checked ^ set(BAD_VALUES))


@pytest.mark.parametrize("key", sorted(BAD_VALUES))
def test_validate_rejects_bad_value_naming_the_key(tiny_config, key):
    config = _all_stages_config(tiny_config)
    pipeline.validate(config, TOPOLOGY)  # the good config passes
    section, _, leaf = key.rpartition(".")
    node = config_lib.get(config, section) if section else config
    with node.ignore_type():
        node[leaf] = BAD_VALUES[key]
    with pytest.raises(config_lib.ConfigError, match=f"config.{key}="):
        pipeline.validate(config, TOPOLOGY)


@pytest.mark.parametrize("bad", [float("inf"), float("nan")])
def test_validate_rejects_non_finite_numbers(tiny_config, bad):
    config = _all_stages_config(tiny_config)
    floats = [k for k, v in _leaves(config_lib.base_config()).items() if type(v) is float]
    assert "train.lr" in floats
    for key in floats:
        section, _, leaf = key.rpartition(".")
        node = config_lib.get(config, section)
        good, node[leaf] = node[leaf], bad
        with pytest.raises(config_lib.ConfigError, match=f"config.{key}={bad}"):
            pipeline.validate(config, TOPOLOGY)
        node[leaf] = good


def test_validate_cross_section_rules(tiny_config):
    config = _all_stages_config(tiny_config)
    config.train.strategy = "puzzle"
    config.data.image_size = 48  # Puzzle's 2x2 tiles at OS 8 need a multiple of 16: ok
    pipeline.validate(config, TOPOLOGY)
    config.model.output_stride = 16  # ... at OS 16 a multiple of 32
    with pytest.raises(config_lib.ConfigError, match=r"config.data.image_size=48.*multiple of 32"):
        pipeline.validate(config, TOPOLOGY)
    config.model.output_stride = 8
    config.train.strategy_args.update(extra=1)
    with pytest.raises(config_lib.ConfigError, match=r"strategy_args=\['extra'\]"):
        pipeline.validate(config, TOPOLOGY)


def test_validate_checks_only_the_selected_stages(tiny_config):
    tiny_config.stages = ("train_cam",)
    tiny_config.rw.beta = -1.0  # read by random_walk only
    pipeline.validate(tiny_config, TOPOLOGY)
    tiny_config.stages = ("train_cam", "nope")
    with pytest.raises(config_lib.ConfigError, match="'nope'"):
        pipeline.validate(tiny_config, TOPOLOGY)


def test_fingerprints_follow_sections_and_propagate_downstream(tiny_config):
    config = _all_stages_config(tiny_config)

    def fingerprints():
        return {name: pipeline.stage_fingerprint(name, config) for name in pipeline.STAGES}

    before = fingerprints()
    config.eval.thresholds = (0.1, 0.2)
    after = fingerprints()
    changed = {name for name in before if before[name] != after[name]}
    assert changed == {
        "eval_cam",
        "eval_pseudo_labels",
        "compare",
        "eval_saliency",
        "compare_saliency",
        "analyze",  # reads every evaluation
    }
    config.train.lr = 0.07
    again = fingerprints()
    changed = {name for name in after if after[name] != again[name]}
    assert changed == {
        "train_cam", "infer_cam", "eval_cam", "affinity_labels", "train_affinity",
        "random_walk", "eval_pseudo_labels", "compare",
        # saliency: C²AM-H's hints are the CAMs
        "train_saliency", "infer_saliency", "train_detector", "infer_detector", "eval_saliency",
        "compare_saliency",
        # segmentation
        "train_segmentation", "infer_segmentation", "eval_segmentation",
        "analyze",
    }  # fmt: skip
    # The fully supervised bound reads no weakly supervised stage: only its backbone's.
    config.segmentation_infer.crf_iterations = 3
    last = fingerprints()
    changed = {name for name in again if again[name] != last[name]}
    assert changed == {
        "infer_segmentation", "eval_segmentation", "infer_segmentation_gt", "eval_segmentation_gt",
        "analyze",
    }  # fmt: skip
    assert pipeline.deps_of("analyze", config) == pipeline.analyze.EVALUATIONS
    config.analysis.tertiles = False  # read by the analysis only
    changed = {name for name, fp in fingerprints().items() if fp != last[name]}
    assert changed == {"analyze"}
    config.segmentation.backbone_weights = "train_oc"
    assert pipeline.deps_of("train_segmentation_gt", config) == ("train_oc",)
    assert pipeline.deps_of("train_segmentation", config) == ("random_walk", "train_oc")


def test_runtime_knobs_never_change_a_fingerprint(tiny_config, tmp_path):
    """Nor does where the dataset is built: moving data_dir reruns nothing."""
    config = _all_stages_config(tiny_config)
    before = {name: pipeline.stage_fingerprint(name, config) for name in pipeline.STAGES}
    config.runtime.update(
        log_every=7, ckpt_every=9, num_workers=3, predict_batch_size=16, input_workers=2
    )
    os.symlink(config.data.data_dir, tmp_path / "moved")
    config.data.data_dir = str(tmp_path / "moved")
    after = {name: pipeline.stage_fingerprint(name, config) for name in pipeline.STAGES}
    assert before == after


def test_stage_graph_reads_only_finished_upstream_stages(tiny_config):
    """Every dependency of a stage comes before it in the quickstart's order."""
    config = common.synthetic_config()
    order = list(config.stages)
    for name in order:
        for dep in pipeline.deps_of(name, config):
            assert order.index(dep) < order.index(name), (name, dep)
    assert pipeline.deps_of("train_cam", config) == ("train_oc",)
    config.train.update(init_backbone_from="", strategy="cam")
    assert pipeline.deps_of("train_cam", config) == ()
    config.affinity.backbone_weights = "pretrained"
    assert pipeline.deps_of("train_affinity", config) == ("affinity_labels",)


def test_compare_sub_config_reads_oc_only_when_needed_and_infers_the_eval_split():
    config = common.synthetic_config("cam")  # f's backbone starts from the OC
    for strategy in ("cam", "pnoc"):
        sub = compare_strategies.sub_config(config, 2, strategy, "/oc/f.npz")
        assert sub.seed == 2 and sub.train.strategy == strategy
        assert sub.train.oc_weights == "/oc/f.npz"
        assert sub.infer.splits == (config.eval.split,)
    config.train.init_backbone_from = ""
    assert compare_strategies.sub_config(config, 0, "cam", "/oc/f.npz").train.oc_weights == ""
    assert compare_strategies.sub_config(config, 0, "poc", "/oc/f.npz").train.oc_weights
