"""Config helpers: big_vision-style `parse_arg`, validation before any compute, fingerprints."""

import hashlib
import json
from typing import Any

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
        if not eq:
            value: Any = True
        elif isinstance(default, bool):
            if raw.lower() not in ("true", "false", "1", "0"):
                raise ValueError(f"config argument {name}={raw!r}: expected true or false")
            value = raw.lower() in ("true", "1")
        elif default is None:
            value = raw
        else:
            value = type(default)(raw)
        result[name] = value
    return result


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


def validate(config: ml_collections.ConfigDict, device_count: int, process_count: int = 1) -> None:
    """Rejects bad values before any data is read or anything is compiled.

    Raises ValueError naming the key, the value and what was expected.
    """
    from pnoc_jax import stages  # late import: stages imports the stage modules

    if not config.get("stages"):
        raise ValueError("config.stages is empty: name at least one stage")
    for name in config.stages:
        if name not in stages.STAGES:
            raise ValueError(
                f"config.stages: unknown stage {name!r}; known: {sorted(stages.STAGES)}"
            )
    for section in ("train", "oc"):
        if section not in config:
            continue
        cfg = config[section]
        batch = cfg.batch_size
        if batch <= 0 or batch % device_count:
            raise ValueError(
                f"config.{section}.batch_size={batch} must be a positive multiple of the "
                f"device count ({device_count})"
            )
        if batch % (process_count * cfg.get("accumulate_steps", 1)):
            raise ValueError(
                f"config.{section}.batch_size={batch} must be divisible by the process count "
                f"({process_count}) times accumulate_steps"
            )
        if cfg.epochs <= 0 and cfg.get("steps", 0) <= 0:
            raise ValueError(f"config.{section}.epochs={cfg.epochs}: expected > 0")
        if cfg.lr <= 0:
            raise ValueError(f"config.{section}.lr={cfg.lr}: expected > 0")
        if not 0 <= cfg.label_smoothing < 1:
            raise ValueError(
                f"config.{section}.label_smoothing={cfg.label_smoothing}: expected in [0, 1)"
            )
        if cfg.dtype not in ("float32", "bfloat16"):
            raise ValueError(f"config.{section}.dtype={cfg.dtype!r}: expected float32 or bfloat16")
        if cfg.strategy not in stages.STRATEGIES:
            raise ValueError(
                f"config.{section}.strategy={cfg.strategy!r}; known: {sorted(stages.STRATEGIES)}"
            )
    for section in ("train", "oc", "affinity"):
        momentum = config[section].get("momentum", 0.0) if section in config else 0.0
        if not 0 <= momentum < 1:
            raise ValueError(f"config.{section}.momentum={momentum}: expected in [0, 1)")
    if config.model.output_stride not in (8, 16, 32):
        raise ValueError(
            f"config.model.output_stride={config.model.output_stride}: expected 8/16/32"
        )
    if config.data.image_size <= 0 or config.data.image_size % 16:
        raise ValueError(
            f"config.data.image_size={config.data.image_size}: expected a positive multiple of 16"
        )
    if "infer" in config and (not config.infer.scales or any(s <= 0 for s in config.infer.scales)):
        raise ValueError(f"config.infer.scales={config.infer.scales}: expected positive scales")


def train_section(**overrides: Any) -> ml_collections.ConfigDict:
    """Defaults of one classifier-training section (`config.train` or `config.oc`), spec §2/§14."""
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
            "accumulate_steps": 1,
            "dtype": "float32",
            "augment": "",  # comma set of colorjitter, randaugment
            "min_size": 320,  # random resize: longer side in [min_size, max_size]
            "max_size": 640,
            "log_every": 50,
            "ckpt_every": 500,
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
                    # (spec §5.4); True reproduces the published numbers, False = paper text.
                    "noc_cse_gradient": True,
                }
            ),
            "oc_checkpoint": "",  # ordinary classifier checkpoint dir; "" = this workdir's train_oc
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
        }
    )
    config.oc = train_section(strategy="cam", augment="randaugment", label_smoothing=0.1)
    config.train = train_section()
    config.infer = ml_collections.ConfigDict(
        {
            "splits": ("train",),
            "scales": (0.5, 1.0, 1.5, 2.0),
            "batch_size": 4,  # images per forward pass (x2 with flips)
            "max_image_size": 500,  # canvas side at scale 1; larger images are rejected
            "checkpoint_stage": "train_cam",
        }
    )
    config.eval = ml_collections.ConfigDict(
        {"split": "train", "thresholds": tuple(round(0.05 * i, 2) for i in range(1, 17))}
    )
    # Affinity labels (spec §8) and AffinityNet training (spec §9); labels need CAMs of `split`.
    config.affinity = ml_collections.ConfigDict(
        {
            "split": "train",
            "fg_threshold": 0.30,
            "bg_threshold": 0.05,
            "saliency_dir": "",  # <id>.png saliency (PNG/255); "" = conventional labels
            "saliency_threshold": 0.10,
            "crf_iterations": 10,
            "crf_gt_prob": 0.7,
            "num_workers": 0,  # CRF worker processes; 0 = one per CPU, 1 = in-process
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
            "log_every": 50,
            "ckpt_every": 500,
        }
    )
    # Random walk and pseudo labels (spec §9); CAMs of every split must exist.
    config.rw = ml_collections.ConfigDict(
        {
            "splits": ("train",),
            "beta": 10.0,
            "exp_times": 8,
            "radius": 5,
            "bg_threshold": 0.30,
            "crf_iterations": 1,
            "crf_gt_prob": 0.9,
            "max_image_size": 500,  # canvas side for the edge network
            "batch_size": 4,  # images per forward pass (x2 with flips)
            "num_workers": 0,  # RW + CRF worker processes; 0 = one per CPU, 1 = in-process
        }
    )
    return config


def synthetic_config(strategy: str = "pnoc", epochs: int = 5) -> ml_collections.ConfigDict:
    """The recipe for the embedded synthetic dataset: tiny ResNet, OS 8, ~100 px images.

    Deviations from the VOC recipe, because nothing here is pretrained and CPU time is short:
    SGD with momentum 0.9 (the reference uses none), lr 0.05 with no 2x/10x/20x multipliers,
    batch 8, and no RandAugment for the OC (its colour operations erase the colour-coded parts
    that identify the synthetic classes). Priors are evaluated on `val` (200 images).
    The pseudo-label deviations are noted below.
    """
    config = base_config()
    config.data.name = "synthetic"
    config.data.image_size = 96
    config.model.backbone = "tiny"
    config.model.output_stride = 8
    small = {
        "batch_size": 8,
        "epochs": epochs,
        "lr": 0.05,
        "momentum": 0.9,
        "lr_mult": (1.0, 1.0, 1.0, 1.0),
        "label_smoothing": 0.1,
        "augment": "",
        "min_size": 80,
        "max_size": 128,
        "log_every": 20,
        "ckpt_every": 200,
    }
    config.oc.update(small)
    config.train.update(small, strategy=strategy, init_backbone_from="train_oc")
    # CAMs of `train` feed the affinity labels, CAMs of `val` the evaluation.
    config.infer.update(splits=("train", "val"), batch_size=8, max_image_size=112)
    config.eval.split = "val"
    # AffinityNet on the 1000 train images, pseudo-labels evaluated on val. Its frozen backbone
    # is the CAM network's (nothing ImageNet-like exists here) and its SGD uses momentum 0.9
    # (spec: 0; with momentum 0 the edge layers are still far from fitted after 3 epochs).
    # 2^4 random-walk steps, not 2^8: the stride-4 grids of ~100 px images are ~25 x 25, and
    # 256 steps spread the CAMs over the whole image.
    config.affinity.update(
        split="train",
        batch_size=8,
        epochs=3,
        momentum=0.9,
        crop_size=96,
        min_size=80,
        max_size=128,
        radius=5,
        backbone_weights="train_cam",
        log_every=10,
        ckpt_every=200,
    )
    config.rw.update(splits=("val",), max_image_size=112, batch_size=8, exp_times=4)
    config.stages = (
        "train_oc", "train_cam", "infer_cam", "eval_cam",
        "affinity_labels", "train_affinity", "random_walk", "eval_pseudo_labels",
    )  # fmt: skip
    return config
