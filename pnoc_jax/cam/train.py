"""Stages `train_oc` and `train_cam`: train a CAM classifier with any strategy (shared loop)."""

import dataclasses
import os
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging

from pnoc_jax.cam import strategies
from pnoc_jax.core import checkpoint, distributed, optim, rng
from pnoc_jax.core.loop import run_training
from pnoc_jax.core.train_state import TrainState, create_state
from pnoc_jax.data import datasets, pipeline, transforms
from pnoc_jax.models import convert
from pnoc_jax.models.classifier import CAMClassifier


def build_model(config: ml_collections.ConfigDict, frozen_bn: bool | None = None, dtype=None):
    """The CAM classifier of `config.model` for `config.data`'s classes."""
    info = datasets.get_info(config.data.name)
    return CAMClassifier(
        backbone=config.model.backbone,
        num_classes=info.num_classes,
        output_stride=config.model.output_stride,
        frozen_bn=config.model.frozen_bn if frozen_bn is None else frozen_bn,
        dtype=jnp.dtype(dtype or "float32"),
    )


def _backbone_init(config: ml_collections.ConfigDict, cfg, workdir: str, mesh):
    """Variables rewrite that loads the backbone of f, or None to keep the random init.

    `cfg.init_backbone_from == "train_oc"` takes the backbone (weights and BN statistics) of
    this workdir's trained OC, a stand-in for ImageNet pre-training where none exists (the
    synthetic data); otherwise `config.model.pretrained` (.npz from models.convert) if set.
    """
    if cfg.get("init_backbone_from") == "train_oc":
        ckpt_dir = cfg.oc_checkpoint or os.path.join(workdir, "train_oc", "ckpt")
        oc = load_classifier_variables(config, "oc", ckpt_dir, build_model(config), mesh)
        weights = {col: {"backbone": jax.device_get(oc[col]["backbone"])} for col in oc}
    elif config.model.pretrained:
        weights = convert.load_npz_weights(config.model.pretrained)
    else:
        return None
    return lambda variables: convert.merge_pretrained(variables, weights)


def _optimizer_config(cfg: ml_collections.ConfigDict, steps: int, frozen: tuple[str, ...] = ()):
    return optim.OptimizerConfig(
        lr=cfg.lr,
        total_steps=steps // cfg.accumulate_steps,
        weight_decay=cfg.weight_decay,
        momentum=cfg.momentum,
        nesterov=cfg.get("nesterov", False),
        poly_power=cfg.poly_power,
        lr_mult=tuple(cfg.lr_mult),
        accumulate_steps=cfg.accumulate_steps,
        frozen=frozen,
    )


def _strategy_config(cfg: ml_collections.ConfigDict, total_steps: int):
    fields = {f.name for f in dataclasses.fields(strategies.StrategyConfig)}
    extra = dict(cfg.strategy_args)
    unknown = set(extra) - fields
    if unknown:
        raise ValueError(
            f"config.*.strategy_args: unknown {sorted(unknown)}; known: {sorted(fields)}"
        )
    return strategies.StrategyConfig(
        name=cfg.strategy,
        total_steps=total_steps,
        label_smoothing=cfg.label_smoothing,
        **extra,
    )


def abstract_state(model, tx, mesh, image_size: int) -> TrainState:
    """Shapes, dtypes and shardings of a state built by `create_state` (a restore target)."""
    shape = (1, image_size, image_size, 3)
    return jax.eval_shape(lambda: create_state(model, tx, rng.init_key(0), shape, mesh))


def load_classifier_variables(
    config: ml_collections.ConfigDict, section: str, ckpt_dir: str, model, mesh
) -> dict:
    """Params and BN statistics of the final checkpoint that stage `config[section]` wrote."""
    cfg = config[section]
    tx, _ = optim.make_optimizer(_optimizer_config(cfg, 1, ("bn",) if model.frozen_bn else ()))
    like = {"f": abstract_state(model, tx, mesh, config.data.image_size)}
    _, restored = checkpoint.restore_final(ckpt_dir, like)
    return {"params": restored["f"].params, "batch_stats": restored["f"].batch_stats}


def run(
    config: ml_collections.ConfigDict,
    workdir: str,
    stage: str,
    section: str,
    on_step: Callable[[int], Any] | None = None,
) -> None:
    """Trains the classifier described by `config[section]`; checkpoints under workdir/stage.

    `on_step(step)` is called after every step (tests use it to simulate preemption).
    """
    cfg = config[section]
    stage_dir = os.path.join(workdir, stage)
    mesh = distributed.make_mesh()

    # ---------------------------------------------------------------- data
    source = pipeline.open_split(config, cfg.split)
    local_batch = cfg.batch_size // jax.process_count()
    steps_per_epoch = int(
        distributed.allgather(np.array(pipeline.steps_per_epoch(len(source), local_batch))).min()
    )
    total_steps = cfg.get("steps", 0) or cfg.epochs * steps_per_epoch
    transform = transforms.make_classification_transform(
        image_size=config.data.image_size,
        min_size=cfg.min_size,
        max_size=cfg.max_size,
        augment=cfg.augment,
    )
    batches = pipeline.train_batches(
        source, transform, local_batch, rng.data_seed(config.seed) + jax.process_index()
    )
    logging.info(
        "%s: %d examples on this process, %d steps/epoch, %d steps, strategy %s",
        stage,
        len(source),
        steps_per_epoch,
        total_steps,
        cfg.strategy,
    )

    # ---------------------------------------------------------------- networks and optimizers
    strategy = _strategy_config(cfg, total_steps)
    model = build_model(config, dtype=cfg.dtype)
    frozen = ("bn",) if config.model.frozen_bn else ()
    tx, _ = optim.make_optimizer(_optimizer_config(cfg, total_steps, frozen))
    input_shape = (1, config.data.image_size, config.data.image_size, 3)

    def init_states() -> dict[str, TrainState]:
        states = {
            "f": create_state(
                model,
                tx,
                rng.init_key(config.seed),
                input_shape,
                mesh,
                _backbone_init(config, cfg, workdir, mesh),
            )
        }
        if strategies.needs_oc(cfg.strategy):
            states["oc"] = _oc_state(config, cfg, workdir, mesh, strategy, total_steps)
        return states

    oc_model = (
        build_model(config, frozen_bn=True, dtype=cfg.dtype)
        if strategies.needs_oc(cfg.strategy)
        else None
    )
    updates = strategies.build_updates(
        strategy, model=model, oc_model=oc_model, mesh=mesh, seed=config.seed
    )

    # ---------------------------------------------------------------- resume and train
    run_training(
        stage_dir=stage_dir,
        states=init_states(),
        updates=updates,
        batches=batches,
        total_steps=total_steps,
        mesh=mesh,
        ckpt_every=cfg.ckpt_every,
        log_every=cfg.log_every,
        description=stage,
        on_step=on_step,
    )


def _oc_state(config, cfg, workdir, mesh, strategy, total_steps) -> TrainState:
    """The ordinary classifier: trained weights from `cfg.oc_checkpoint` or the train_oc stage.

    BN is frozen (FixedBatchNorm) and BN parameters never move; for P-NOC the rest is trained
    by its own optimizer (noc), for OC-CSE and P-OC it stays fixed.
    """
    ckpt_dir = cfg.oc_checkpoint or os.path.join(workdir, "train_oc", "ckpt")
    oc_model = build_model(config, frozen_bn=True, dtype=cfg.dtype)
    trained = load_classifier_variables(config, "oc", ckpt_dir, oc_model, mesh)
    noc_steps = total_steps // strategy.noc_every
    noc_cfg = _optimizer_config(
        ml_collections.ConfigDict({**cfg.to_dict(), "lr": cfg.lr * cfg.noc_lr_mult}),
        noc_steps,
        ("bn",),
    )
    tx, _ = optim.make_optimizer(noc_cfg)
    input_shape = (1, config.data.image_size, config.data.image_size, 3)
    return create_state(
        oc_model,
        tx,
        rng.init_key(config.seed, rng.Stream.INIT_OC),
        input_shape,
        mesh,
        lambda variables: {**variables, **trained},
    )
