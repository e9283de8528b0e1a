"""Stages `train_oc` and `train_cam`: train a CAM classifier with any strategy (the one loop).

`train_oc` trains the ordinary classifier of `config.oc`, `train_cam` the generator f of
`config.train`. Both export `weights/f.npz`; P-NOC's `train_cam` also exports the trained noc
as `weights/oc.npz`. Checkpoints under `ckpt/` make both resumable.
"""

from collections.abc import Callable
from typing import Any

import jax.numpy as jnp
import ml_collections
from absl import logging

from pnoc_jax import config_lib
from pnoc_jax.cam import strategies
from pnoc_jax.core import artifacts, distributed, fileio, optim, rng, weights
from pnoc_jax.core.loop import TrainingProgram
from pnoc_jax.core.train_state import TrainState, create_state
from pnoc_jax.data import datasets, pipeline, transforms
from pnoc_jax.models.backbones import BackboneStart
from pnoc_jax.models.classifier import CAMClassifier

STAGE_OF = {"oc": "train_oc", "train": "train_cam"}  # the stage of each training section


def build_model(
    config: ml_collections.ConfigDict,
    frozen_bn: bool | None = None,
    dtype: str | None = None,
    remat: bool = False,
) -> CAMClassifier:
    """The CAM classifier of `config.model` for `config.data`'s classes (`remat`: the
    training programs' `config.runtime.remat`)."""
    info = datasets.get_info(config.data.name)
    return CAMClassifier(
        backbone=config.model.backbone,
        num_classes=info.num_classes,
        output_stride=config.model.output_stride,
        frozen_bn=config.model.frozen_bn if frozen_bn is None else frozen_bn,
        dtype=jnp.dtype(dtype or "float32"),
        remat=remat,
    )


def oc_weights(section: ml_collections.ConfigDict, workdir: str) -> str:
    """The ordinary classifier a training section reads: its `oc_weights`, or train_oc's."""
    if section.oc_weights:
        return fileio.expand(section.oc_weights)
    return artifacts.weights_file(workdir, "train_oc")


def backbone_start(config: ml_collections.ConfigDict, section_name: str) -> BackboneStart:
    """Where f's backbone starts: the trained OC's (`init_backbone_from="train_oc"`, a stand-in
    for ImageNet pre-training where none exists; `oc_weights` when set), or ImageNet weights
    (`config.model.pretrained`, "" = random)."""
    section = config[section_name]
    trained = section.init_backbone_from == "train_oc"
    return BackboneStart(
        stage=STAGE_OF[section_name],
        arch=config.model.backbone,
        source="train_oc" if trained else "pretrained",
        choice_key=f"{section_name}.init_backbone_from",
        pretrained=config.model.pretrained,
        trained_weights=section.oc_weights if trained else "",
    )


def optimizer_config(
    section: ml_collections.ConfigDict,
    steps: int,
    frozen: tuple[str, ...] = (),
    lr_mult: float = 1.0,
) -> optim.OptimizerConfig:
    """SGD of a classifier-training section. Accumulated gradients are SUMMED, as the reference
    CAM scripts do (they do not divide the loss by the accumulation steps, method.md §2), so the
    section's lr and weight decay are the reference's own, for f and for noc."""
    return optim.OptimizerConfig(
        lr=section.lr * lr_mult,
        total_steps=steps // section.accumulate_steps,
        weight_decay=section.weight_decay,
        momentum=section.momentum,
        nesterov=section.nesterov,
        poly_power=section.poly_power,
        lr_mult=tuple(section.lr_mult),
        accumulate_steps=section.accumulate_steps,
        accumulation="sum",
        frozen=frozen,
    )


def _oc_state(
    config: ml_collections.ConfigDict,
    section: ml_collections.ConfigDict,
    workdir: str | None,
    mesh,
    strategy: strategies.StrategyConfig,
) -> TrainState:
    """The ordinary classifier, loaded from its weights file (fresh variables when `workdir`
    is None).

    BN is frozen (FixedBatchNorm) and BN parameters never move; for P-NOC the rest is trained
    by its own optimizer (noc), for OC-CSE and P-OC it stays fixed.
    """
    oc_model = build_model(config, True, section.dtype, config.runtime.remat)
    steps = strategy.total_steps // strategy.noc_every
    tx, step_stats = optim.make_optimizer(
        optimizer_config(section, steps, ("bn",), lr_mult=section.noc_lr_mult)
    )
    input_shape = (1, config.data.image_size, config.data.image_size, 3)
    init_key = rng.init_key(config.seed, rng.Stream.INIT_OC)
    loaded = weights.initializer(oc_weights(section, workdir)) if workdir is not None else None
    return create_state(oc_model, tx, init_key, input_shape, mesh, loaded, step_stats)


def program(
    config: ml_collections.ConfigDict,
    section_name: str,
    mesh,
    total_steps: int,
    workdir: str | None = None,
) -> TrainingProgram:
    """The training program of `config[section_name]` over `mesh`: f (and the OC or noc its
    strategy needs), the strategy's updates, the classification transform. With `workdir`
    None no weight file is read (fresh variables; `pnoc_jax.plan` compiles it)."""
    section = config[section_name]
    strategy = strategies.strategy_config(section, total_steps)
    model = build_model(config, dtype=section.dtype, remat=config.runtime.remat)
    frozen = ("bn",) if config.model.frozen_bn else ()
    tx, step_stats = optim.make_optimizer(optimizer_config(section, total_steps, frozen))
    input_shape = (1, config.data.image_size, config.data.image_size, 3)
    init = backbone_start(config, section_name).initializer(workdir, model, input_shape)
    oc_model = None
    if strategies.needs_oc(section.strategy):
        oc_model = build_model(config, True, section.dtype, config.runtime.remat)

    def make_states() -> dict[str, TrainState]:
        key = rng.init_key(config.seed)
        states = {"f": create_state(model, tx, key, input_shape, mesh, init, step_stats)}
        if oc_model is not None:
            states["oc"] = _oc_state(config, section, workdir, mesh, strategy)
        return states

    transform = transforms.make_classification_transform(
        image_size=config.data.image_size,
        min_size=section.min_size,
        max_size=section.max_size,
        augment=section.augment,
    )
    updates = strategies.build_updates(
        strategy, model=model, oc_model=oc_model, mesh=mesh, seed=config.seed
    )
    return TrainingProgram(make_states, updates, transform, ("image", "labels"), section.batch_size)


def run(
    config: ml_collections.ConfigDict,
    workdir: str,
    dataset: datasets.Dataset,
    *,
    stage: str,
    section_name: str,
    on_step: Callable[[int], Any] | None = None,
) -> None:
    """Trains the classifier of `config[section_name]`; outputs under `<workdir>/<stage>/`.

    `on_step(step)` is called after every step (tests use it to simulate preemption).
    """
    section = config[section_name]
    mesh = distributed.make_mesh()
    split = dataset.split(section.split, whole=True)
    source = pipeline.labelled_only(split)  # images without a class are skipped (reference)
    if len(source) < len(split):
        logging.info(
            "%s: %d of %d images have no class and are skipped",
            stage,
            len(split) - len(source),
            len(split),
        )
    steps = pipeline.section_steps(section, len(source))
    training = program(config, section_name, mesh, steps, workdir)
    pipeline.train(
        stage, section, source, training, config=config, mesh=mesh, workdir=workdir,
        on_step=on_step, detail=f"strategy {section.strategy}",
    )  # fmt: skip


def train_oc(
    config: ml_collections.ConfigDict, workdir: str, dataset: datasets.Dataset, **kwargs: Any
) -> None:
    run(config, workdir, dataset, stage="train_oc", section_name="oc", **kwargs)


def train_cam(
    config: ml_collections.ConfigDict, workdir: str, dataset: datasets.Dataset, **kwargs: Any
) -> None:
    run(config, workdir, dataset, stage="train_cam", section_name="train", **kwargs)


def missing_oc(
    config: ml_collections.ConfigDict, workdir: str, dataset: datasets.Dataset
) -> list[str]:
    """train_oc's outputs that do not exist: its exported weights."""
    del config, dataset
    return artifacts.missing([artifacts.weights_file(workdir, "train_oc")])


def missing_cam(
    config: ml_collections.ConfigDict, workdir: str, dataset: datasets.Dataset
) -> list[str]:
    """train_cam's outputs that do not exist: f's weights, and noc's for P-NOC."""
    states = ("f", "oc") if "noc" in strategies.STRATEGIES[config.train.strategy] else ("f",)
    return artifacts.missing(artifacts.weights_file(workdir, "train_cam", s) for s in states)


def cam_deps(config: ml_collections.ConfigDict) -> tuple[str, ...]:
    """train_cam reads this workdir's train_oc when it needs an OC that `oc_weights` omits."""
    reads = strategies.reads_oc(config.train) and not config.train.oc_weights
    return ("train_oc",) if reads else ()


def _validate_section(
    config: ml_collections.ConfigDict, name: str, topology: config_lib.Topology
) -> None:
    """Checks of one classifier-training section (`config.oc` or `config.train`)."""
    section = config[name]
    check, number = config_lib.check, config_lib.check_number
    strategies.validate_args(config, name)
    config_lib.check_choice(config, f"{name}.split", datasets.get_info(config.data.name).splits)
    config_lib.check_training(config, name, topology)
    config_lib.check_sgd_groups(config, name)
    number(config, f"{name}.label_smoothing", low=0, high=1, high_open=True)
    number(config, f"{name}.accumulate_steps", low=1, integer=True)
    config_lib.check_choice(config, f"{name}.dtype", ("float32", "bfloat16"))
    transforms.check_augment(config, f"{name}.augment")
    number(config, f"{name}.noc_lr_mult", low=0, low_open=True)
    config_lib.check_file(config, f"{name}.oc_weights", "the ordinary classifier's weights")
    needs_pretrained = datasets.get_info(config.data.name).needs_pretrained
    backbone_start(config, name).validate(config, needs_pretrained)
    if "puzzle" in strategies.STRATEGIES[section.strategy]:
        tile = 2 * config.model.output_stride
        check(
            config.data.image_size % tile == 0,
            "data.image_size",
            config.data.image_size,
            f"a multiple of {tile} for Puzzle's 2x2 tiles at output stride "
            f"{config.model.output_stride} (strategy {section.strategy!r} of config.{name})",
        )


def validate_oc(config: ml_collections.ConfigDict, topology: config_lib.Topology) -> None:
    _validate_section(config, "oc", topology)
    config_lib.check_choice(config, "oc.init_backbone_from", ("",))
    config_lib.check(
        not strategies.needs_oc(config.oc.strategy),
        "oc.strategy",
        config.oc.strategy,
        "a strategy without an ordinary classifier of its own",
    )


def validate_train(config: ml_collections.ConfigDict, topology: config_lib.Topology) -> None:
    _validate_section(config, "train", topology)
    config_lib.check_choice(config, "train.init_backbone_from", ("", "train_oc"))
