"""The config schema (`base_config`: every key the stages read), big_vision-style `parse_arg`,
checks run before any compute, and fingerprints.

Sections map onto stages: a stage declares the sections whose values determine its outputs
(its fingerprint) and the checks that validate them. `config.runtime` holds the knobs that
change how fast or how often, never what a stage produces, so no stage declares it and
changing it never reruns anything.
"""

import dataclasses
import hashlib
import importlib.util
import json
import math
import os
import sys
import types
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

import ml_collections


def parse_arg(arg: str | None, **defaults: Any) -> ml_collections.ConfigDict:
    """Parses 'a=1,b=x,flag' into a ConfigDict typed by `defaults` (big_vision semantics).

    A bare name sets a boolean to True. Unknown names raise ValueError listing the known ones.
    """
    result = ml_collections.ConfigDict(defaults)
    if not arg:
        return result
    for item in arg.split(","):
        if not item:
            continue
        name, eq, raw = item.partition("=")
        if name not in defaults:
            raise ValueError(f"config argument {name!r} unknown; known: {sorted(defaults)}")
        default = defaults[name]
        if not eq and not isinstance(default, bool):
            raise ValueError(f"config argument {name!r} needs a value, e.g. {name}={default!r}")
        if not eq:
            value: Any = True
        elif isinstance(default, bool):
            if raw.lower() not in ("true", "false", "1", "0"):
                raise ValueError(f"config argument {name}={raw!r}: expected true or false")
            value = raw.lower() in ("true", "1")
        elif default is None:
            value = raw
        else:
            try:
                value = type(default)(raw)
            except ValueError:
                raise ValueError(
                    f"config argument {name}={raw!r}: expected {type(default).__name__}"
                ) from None
        result[name] = value
    return result


def import_beside(config_file: str, name: str) -> types.ModuleType:
    """The module `<name>.py` in the folder of `config_file`: how a config file imports the
    recipe helpers beside it (`configs/common.py`) wherever it is run from."""
    path = os.path.join(os.path.dirname(os.path.abspath(config_file)), f"{name}.py")
    module_name = f"_pnoc_configs_{hashlib.sha256(path.encode()).hexdigest()[:8]}_{name}"
    if module_name not in sys.modules:
        spec = importlib.util.spec_from_file_location(module_name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[module_name] = module
        spec.loader.exec_module(module)
    return sys.modules[module_name]


def to_plain(config: ml_collections.ConfigDict | Any) -> Any:
    """A JSON-able copy of a ConfigDict (tuples become lists)."""
    if isinstance(config, ml_collections.ConfigDict):
        return {k: to_plain(v) for k, v in sorted(config.items())}
    if isinstance(config, list | tuple):
        return [to_plain(v) for v in config]
    return config


def fingerprint(obj: Any) -> str:
    """A short stable hash of a JSON-able object."""
    text = json.dumps(to_plain(obj), sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


class ConfigError(ValueError):
    """A config value that cannot work; the message names the key, the value and what fits."""


@dataclasses.dataclass(frozen=True)
class Topology:
    """The devices a run has, for the checks that depend on them (batch divisibility)."""

    device_count: int
    process_count: int = 1
    # False when nothing will read the dataset (`pnoc_jax.plan`): where it lives is not checked.
    reads_data: bool = True


Check = Callable[[ml_collections.ConfigDict, Topology], None]


class StageChecks(Protocol):
    """What `validate` needs of a stage: the sections it reads and its cross-section checks."""

    sections: tuple[str, ...]
    checks: tuple[Check, ...]


def get(config: ml_collections.ConfigDict, key: str) -> Any:
    """The value at a dotted key ("train.strategy_args.noc_every")."""
    node = config
    for part in key.split("."):
        node = node[part]
    return node


def check(ok: bool, key: str, value: Any, expected: str) -> None:
    """Raises ConfigError `config.<key>=<value>: expected <expected>` unless `ok`."""
    if not ok:
        raise ConfigError(f"config.{key}={value!r}: expected {expected}")


def check_number(
    config: ml_collections.ConfigDict,
    key: str,
    *,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
    high_open: bool = False,
    integer: bool = False,
) -> None:
    """Checks that `config.<key>` is a number (an int if `integer`) in the given interval."""
    value = get(config, key)
    kind = "an integer" if integer else "a finite number"
    types = (int,) if integer else (int, float)
    bounds = []
    if low is not None:
        bounds.append(f"{'>' if low_open else '>='} {low}")
    if high is not None:
        bounds.append(f"{'<' if high_open else '<='} {high}")
    expected = f"{kind} {' and '.join(bounds)}".strip()
    ok = isinstance(value, types) and not isinstance(value, bool) and math.isfinite(value)
    if ok and low is not None:
        ok = value > low if low_open else value >= low
    if ok and high is not None:
        ok = value < high if high_open else value <= high
    check(ok, key, value, expected)


def check_choice(config: ml_collections.ConfigDict, key: str, choices: Sequence[Any]) -> None:
    value = get(config, key)
    check(value in choices, key, value, f"one of {sorted(choices)}")


def check_file(config: ml_collections.ConfigDict, key: str, what: str) -> None:
    """An optional path: "" or an existing file."""
    value = get(config, key)
    path = os.path.expanduser(value) if value else ""
    check(not path or os.path.isfile(path), key, value, f"{what}: an existing file, or ''")


def check_seeds(config: ml_collections.ConfigDict, key: str) -> None:
    """`config.<key>` is a non-empty tuple of distinct integer seeds."""
    seeds = tuple(get(config, key))
    check(
        bool(seeds) and len(set(seeds)) == len(seeds) and all(isinstance(s, int) for s in seeds),
        key,
        seeds,
        "distinct integer seeds",
    )


def from_section(cls: type, section: ml_collections.ConfigDict, **extra: Any) -> Any:
    """The dataclass `cls` filled from the same-named keys of a config section (plus `extra`)."""
    names = {f.name for f in dataclasses.fields(cls)} - set(extra)
    return cls(**{name: section[name] for name in names}, **extra)


def validate(
    config: ml_collections.ConfigDict,
    stages: Mapping[str, StageChecks],
    section_checks: Mapping[str, Check],
    topology: Topology,
) -> None:
    """Rejects bad values before any data is read or anything is compiled.

    Checks every config section the selected stages read (each once, with `section_checks`),
    `config.runtime`, then each stage's cross-section checks. Raises ConfigError naming the
    key, the value and what was expected.
    """
    check(bool(config.get("stages")), "stages", config.get("stages"), "at least one stage")
    for name in config.stages:
        check(name in stages, "stages", name, f"known stage names {sorted(stages)}")
    sections = dict.fromkeys(s for name in config.stages for s in stages[name].sections)
    checks = [section_checks[s] for s in ("runtime", *sections)]
    checks += [c for name in config.stages for c in stages[name].checks]
    for validator in dict.fromkeys(checks):
        validator(config, topology)


def validate_seed(config: ml_collections.ConfigDict, topology: Topology) -> None:
    del topology
    check_number(config, "seed", low=0, integer=True)


def validate_runtime(config: ml_collections.ConfigDict, topology: Topology) -> None:
    del topology
    for key in ("log_every", "ckpt_every", "predict_batch_size"):
        check_number(config, f"runtime.{key}", low=1, integer=True)
    check_number(config, "runtime.num_workers", low=0, integer=True)
    check_number(config, "runtime.input_workers", low=-1, integer=True)


def check_batch_and_duration(
    config: ml_collections.ConfigDict, name: str, topology: Topology, min_batch: int = 1
) -> None:
    """`<name>.batch_size` (>= min_batch, a multiple of the device count), `accumulate_steps`
    where the section has it, and the duration (`epochs`, or `steps` > 0 overriding them)."""
    section = config[name]
    check_number(config, f"{name}.batch_size", low=min_batch, integer=True)
    check(
        section.batch_size % topology.device_count == 0,
        f"{name}.batch_size",
        section.batch_size,
        f"a multiple of the device count ({topology.device_count})",
    )
    if "accumulate_steps" in section:
        check_number(config, f"{name}.accumulate_steps", low=1, integer=True)
    check_number(config, f"{name}.epochs", low=0, integer=True)
    check_number(config, f"{name}.steps", low=0, integer=True)
    check(
        section.epochs > 0 or section.steps > 0,
        f"{name}.epochs",
        section.epochs,
        f"> 0 (or config.{name}.steps > 0)",
    )


def check_splits(config: ml_collections.ConfigDict, key: str, splits: Sequence[str]) -> None:
    """`config.<key>` is a non-empty tuple of `splits` (the configured dataset's)."""
    section, name = key.rsplit(".", 1)
    value = tuple(config[section][name])
    check(
        bool(value) and set(value) <= set(splits),
        key,
        value,
        f"a non-empty subset of the dataset's splits {list(splits)}",
    )


def check_training(config: ml_collections.ConfigDict, name: str, topology: Topology) -> None:
    """The keys every training section has: batch, duration, SGD and the random resize."""
    section = config[name]
    check_batch_and_duration(config, name, topology)
    check_number(config, f"{name}.lr", low=0, low_open=True)
    check_number(config, f"{name}.momentum", low=0, high=1, high_open=True)
    check_number(config, f"{name}.weight_decay", low=0)
    check_number(config, f"{name}.poly_power", low=0)
    check_number(config, f"{name}.min_size", low=1, integer=True)
    check_number(config, f"{name}.max_size", low=section.min_size, integer=True)


def check_sgd_groups(config: ml_collections.ConfigDict, name: str) -> None:
    """Nesterov only with momentum, and the four learning-rate multipliers of the reference's
    parameter groups (backbone weight, backbone bias, head weight, head bias)."""
    section = config[name]
    check(
        not section.nesterov or section.momentum > 0,
        f"{name}.nesterov",
        section.nesterov,
        f"False unless config.{name}.momentum > 0",
    )
    mult = tuple(section.lr_mult)
    check(
        len(mult) == 4 and all(isinstance(m, int | float) and m > 0 for m in mult),
        f"{name}.lr_mult",
        mult,
        "4 positive multipliers (backbone weight, backbone bias, head weight, head bias)",
    )


def train_section(**overrides: Any) -> ml_collections.ConfigDict:
    """Defaults of one classifier-training section (`config.train` or `config.oc`), §2/§14."""
    section = ml_collections.ConfigDict(
        {
            "strategy": "cam",
            "split": "train",
            "batch_size": 32,
            "epochs": 15,
            "steps": 0,  # > 0 overrides epochs
            "lr": 0.1,
            "momentum": 0.0,
            "nesterov": False,
            "weight_decay": 1e-4,
            "poly_power": 0.9,
            "lr_mult": (1.0, 2.0, 10.0, 20.0),  # backbone weight/bias, new-layer weight/bias
            "label_smoothing": 0.0,
            "accumulate_steps": 1,  # micro-batch gradients SUMMED per step, as the reference
            "dtype": "float32",
            "augment": "",  # comma set of colorjitter, randaugment
            "min_size": 320,  # random resize: longer side in [min_size, max_size]
            "max_size": 640,
            # Loss weights and schedules of the strategies (cam/strategies.StrategyConfig).
            "strategy_args": ml_collections.ConfigDict(
                {
                    "re_start": 0.0,  # Puzzle λ_re: 0 -> 4 over the first half
                    "re_end": 4.0,
                    "re_fraction": 0.5,
                    "cse_start": 0.3,  # OC-CSE λ_cse: 0.3 -> 1 over all steps
                    "cse_end": 1.0,
                    "cse_fraction": 1.0,
                    "noc_start": 0.0,  # P-NOC λ_noc: 0 -> 1 over all steps
                    "noc_end": 1.0,
                    "noc_fraction": 1.0,
                    "noc_threshold": 0.2,  # δ_noc: noc sees pixels with ψ(A^r) <= δ_noc
                    "noc_every": 1,  # k_noc
                    # The official code also feeds noc the gradient of λ_cse·ℓ(noc(x̃), y∖r)
                    # (method.md §5.4); True reproduces the published numbers, False = paper text.
                    "noc_cse_gradient": True,
                }
            ),
            # The ordinary classifier's weights (.npz); "" = this workdir's train_oc.
            "oc_weights": "",
            # "train_oc": start f's backbone from the trained OC (pre-training stand-in).
            "init_backbone_from": "",
            "noc_lr_mult": 1.0,
        }
    )
    section.update(overrides)
    return section


def base_config() -> ml_collections.ConfigDict:
    """Every key the stages read, with the reference defaults. Config files override these."""
    config = ml_collections.ConfigDict()
    config.stages = ("train_cam", "infer_cam", "eval_cam")
    config.seed = 0
    config.data = ml_collections.ConfigDict(
        {
            "name": "voc2012",
            "data_dir": "~/tensorflow_datasets",  # where TFDS datasets are built
            "manual_dir": "",  # user-supplied raw data (VOCdevkit)
            "image_size": 512,  # training crop
        }
    )
    config.model = ml_collections.ConfigDict(
        {
            "backbone": "resnet101",
            "output_stride": 16,
            "frozen_bn": False,
            "pretrained": "",  # .npz from `python -m pnoc_jax.models.convert`
            # Real-image datasets stop in validation without `pretrained` unless this is set.
            "allow_random_init": False,
        }
    )
    config.oc = train_section(strategy="cam", augment="randaugment", label_smoothing=0.1)
    config.train = train_section()
    config.infer = ml_collections.ConfigDict(
        {
            "splits": ("train",),
            "scales": (0.5, 1.0, 1.5, 2.0),
            "max_image_size": 500,  # canvas side at scale 1; larger images are rejected
            "weights_from": "train_cam",  # the training stage whose network makes the CAMs
        }
    )
    config.eval = ml_collections.ConfigDict(
        {
            "split": "train",
            "thresholds": tuple(round(0.05 * i, 2) for i in range(1, 17)),
            # The priors' sweep is also reported with each thresholded map refined by the
            # dense CRF (method.md §6: t 10, gt_prob 0.7); 0 = the plain sweep only. The random
            # walk's sweep uses the pseudo-labels' CRF (config.rw.crf_*), as the reference.
            "crf_iterations": 10,
            "crf_gt_prob": 0.7,
        }
    )
    # Affinity labels from the CAMs of `split` (method.md §8).
    config.affinity_labels = ml_collections.ConfigDict(
        {
            "split": "train",
            "fg_threshold": 0.30,
            "bg_threshold": 0.05,
            "saliency_dir": "",  # <id>.png saliency (PNG/255); "" = conventional labels
            # Or the stage whose saliency to use: "infer_saliency" (C²AM(-H) masks) or
            # "infer_detector" (the detector's maps); "" = saliency_dir.
            "saliency": "",
            "saliency_threshold": 0.10,
            "crf_iterations": 10,
            "crf_gt_prob": 0.7,
        }
    )
    # AffinityNet (IRN boundary branch) trained on those labels (method.md §9).
    config.affinity = ml_collections.ConfigDict(
        {
            "backbone": "",  # "" = config.model.backbone
            "output_stride": 16,
            "backbone_weights": "pretrained",  # or "train_cam" (the CAM network's backbone)
            "batch_size": 32,
            "epochs": 3,
            "steps": 0,  # > 0 overrides epochs
            "lr": 0.1,
            "momentum": 0.0,
            "weight_decay": 1e-4,
            "poly_power": 0.9,
            "crop_size": 512,
            "min_size": 320,
            "max_size": 640,
            "radius": 10,
        }
    )
    # Random walk and pseudo labels (method.md §9); CAMs of every split must exist.
    config.rw = ml_collections.ConfigDict(
        {
            "splits": ("train",),
            "beta": 10.0,
            "exp_times": 8,
            "radius": 5,
            "bg_threshold": 0.30,
            # "" = cut the pseudo-labels at bg_threshold; a split of rw.splits = at the best
            # threshold (0.05 ... 0.80) of the CRF sweep of that split's random-walk maps
            # against its ground truth (method.md §9).
            "bg_threshold_split": "",
            "crf_iterations": 1,
            "crf_gt_prob": 0.9,
            "max_image_size": 500,  # canvas side for the edge network
        }
    )
    # Saliency (method.md §7): C²AM / C²AM-H (stage train_saliency). Reference C²AM-H: lr 0.001,
    # 10 epochs, 448 crops of 515 squares, B32 (paper; HEAD B64 x 2 summed), α 0.25, hint
    # weight 1, δ_fg 0.4, LS 0.1.
    config.saliency = ml_collections.ConfigDict(
        {
            "method": "ccamh",  # "ccam" (contrastive only) or "ccamh" (+ hints from infer_cam)
            "split": "train",
            "backbone": "",  # "" = config.model.backbone
            "output_stride": 16,
            # "pretrained" (saliency.pretrained, else config.model.pretrained for the same
            # backbone), or "train_oc" / "train_cam": that classifier's backbone.
            "backbone_weights": "pretrained",
            "pretrained": "",
            "batch_size": 32,
            "accumulate_steps": 1,
            "epochs": 10,
            "steps": 0,  # > 0 overrides epochs
            "lr": 0.001,
            "momentum": 0.0,
            "weight_decay": 1e-4,
            "poly_power": 0.9,
            "lr_mult": (1.0, 2.0, 10.0, 20.0),  # backbone weight/bias, disentangler weight/bias
            "resize_size": 515,  # images (and hints) resized to this square, then
            "crop_size": 448,  # a random crop of this side
            "alpha": 0.25,  # rank weighting of sim_max_loss
            "hint_weight": 1.0,
            "hint_threshold": 0.4,  # δ_fg: hints >= δ_fg are pulled towards foreground
            "label_smoothing": 0.1,  # hint target 1 - LS/2
            "dtype": "float32",
        }
    )
    # C²AM(-H) maps with TTA and their CRF masks (stage infer_saliency).
    config.saliency_infer = ml_collections.ConfigDict(
        {
            "splits": ("train",),
            "scales": (0.5, 1.0, 1.5, 2.0),
            "max_image_size": 500,  # canvas side at scale 1; larger images are rejected
            "mask_threshold": 0.2,
            "crf_iterations": 10,
            "crf_gt_prob": 0.7,
        }
    )
    # The saliency detector (PoolNet) trained on the C²AM(-H) masks (stage train_detector).
    # Reference: caffe ResNet-50, Adam 5e-5, wd 5e-4, batch 1 x 10 accumulated, 9 epochs, flip.
    config.detector = ml_collections.ConfigDict(
        {
            "split": "train",
            "backbone": "resnet50",
            "backbone_weights": "pretrained",  # detector.pretrained, or "train_oc"/"train_cam"
            "pretrained": "",  # ImageNet weights of `backbone` (.npz); "" = random
            "head_divisor": 1,  # PoolNet's head widths (128...512) divided by this
            "batch_size": 10,  # images padded onto one canvas (the reference's 10 accumulated)
            "accumulate_steps": 1,
            "epochs": 9,
            "steps": 0,  # > 0 overrides epochs
            "lr": 5e-5,
            "weight_decay": 5e-4,
            "max_image_size": 500,  # the canvas holds any image of this side (x input_scale)
            "input_scale": 1.0,  # images are resized by this factor before the network
            "dtype": "float32",
        }
    )
    # Saliency maps of the detector (stage infer_detector).
    config.detector_infer = ml_collections.ConfigDict(
        {
            "splits": ("train",),
            "weights": "",  # "" = this workdir's train_detector, or a PoolNet weights file
        }
    )
    # Table 6 on config.eval.split (stage eval_saliency): which saliency stages to evaluate.
    config.saliency_eval = ml_collections.ConfigDict(
        {"sources": ("infer_saliency", "infer_detector")}
    )
    # The saliency comparison (stage compare_saliency): the recipe and its variants per seed.
    config.compare_saliency = ml_collections.ConfigDict({"seeds": (0, 1, 2)})

    # Segmentation: DeepLab trained on the pseudo-labels (stages
    # train/infer/eval_segmentation) or, for the fully supervised bound, on the ground-truth
    # masks (the same stages named *_gt). method.md §10, HEAD runner.
    config.segmentation = ml_collections.ConfigDict(
        {
            "model": "deeplabv3plus",  # or "deeplabv2" (ASPP-V2 + MSC, the paper's V2 rows)
            "backbone": "",  # "" = config.model.backbone
            "output_stride": 16,
            "atrous_rates": (),  # () = the model's (V3+: 6/12/18 at OS16, x2 at OS8; V2: 6..24)
            "head_channels": 256,  # DeepLabV3+ ASPP / decoder width
            "low_level_channels": 48,  # DeepLabV3+ decoder's layer1 reduction
            "frozen_bn": False,
            # Backbone start: "pretrained" (config.model.pretrained), "train_oc" or "train_cam"
            # (a trained classifier's backbone, where no ImageNet weights exist).
            "backbone_weights": "pretrained",
            # ImageNet weights of segmentation.backbone (.npz); "" = config.model.pretrained
            # when the backbone is the CAM network's (DeepLabV2 rows: ResNet-101's).
            "pretrained": "",
            "split": "train",  # trained on this split's pseudo-labels (or masks)
            "val_split": "val",  # the best checkpoint by mIoU on this split's pseudo-labels
            "validate_every": 1,  # epochs between validations
            "batch_size": 32,
            "epochs": 15,
            "steps": 0,  # > 0 overrides epochs
            "lr": 0.007,
            "momentum": 0.9,
            "nesterov": True,
            "weight_decay": 4e-5,
            "poly_power": 0.9,
            "lr_mult": (1.0, 2.0, 10.0, 20.0),  # backbone weight/bias, head weight/bias
            "label_smoothing": 0.1,
            "dtype": "float32",
            "augment": "colorjitter",
            "crop_size": 512,
            "min_size": 320,  # random resize: longer side in [min_size, max_size]
            "max_size": 640,
        }
    )
    # Test time: scales x flip, mean of the logits, softmax, dense CRF (DeepLab's settings).
    config.segmentation_infer = ml_collections.ConfigDict(
        {
            "splits": ("val",),
            "scales": (0.5, 1.0, 1.5, 2.0),
            "flip": True,
            "max_image_size": 500,  # canvas side at scale 1; larger images are rejected
            "crf_iterations": 10,  # 0 = no CRF
        }
    )
    # The strategy ablation (stage `compare`): every strategy for every seed.
    config.compare = ml_collections.ConfigDict(
        {"strategies": ("cam", "puzzle", "poc", "pnoc"), "seeds": (0, 1, 2)}
    )
    # The class analysis (stage `analyze`, method.md §15): semantic groups as
    # ("name=class,class", ...), () = the dataset's (VOC: the paper's; COCO: its
    # supercategories; synthetic: its builder's), and the size / frequency tertiles.
    config.analysis = ml_collections.ConfigDict({"groups": (), "tertiles": True})
    # How fast and how often, never what: not part of any stage's fingerprint.
    config.runtime = ml_collections.ConfigDict(
        {
            "log_every": 50,  # training steps between metric lines
            "ckpt_every": 500,  # training steps between checkpoints
            "num_workers": 0,  # CPU worker processes (CRF, random walk); 0 = one per CPU
            # grain worker processes decoding and augmenting training batches; 0 = threads of
            # the training process; -1 = every CPU but two, at most 32 (0 with <= 4 CPUs).
            "input_workers": -1,
            "predict_batch_size": 4,  # images per forward pass at inference (x2 with flips)
            # Recompute each backbone block's activations in the backward pass of the CAM,
            # C²AM-H, detector and DeepLab updates: about a third more FLOPs per step for a
            # fraction of the activation memory, the same values up to float rounding (what
            # `plan` advises when an update does not fit a chip).
            "remat": False,
        }
    )
    return config
