"""Stage `train_affinity`: train AffinityNet's edge layers on the affinity labels (method.md §9).

Data: the images of `config.affinity_labels.split` with their affinity-label PNGs; random
long-side resize, flip, normalise, random crop, labels to crop/4. SGD
(`config.affinity.momentum`, 0 in the spec) with poly decay on the edge layers only; the
backbone is frozen. Runs on the one training loop; exports `weights/aff.npz`.
"""

import functools
import os
from collections.abc import Callable
from typing import Any

import jax
import ml_collections
import numpy as np
from jax.sharding import Mesh

from pnoc_jax import config_lib
from pnoc_jax.affinity import losses
from pnoc_jax.core import artifacts, distributed, fileio, optim, weights
from pnoc_jax.core.loop import TrainingProgram, Update, jit_update, one_network
from pnoc_jax.core.masks import IGNORE
from pnoc_jax.core.train_state import TrainState
from pnoc_jax.data import datasets, pipeline, transforms
from pnoc_jax.models import backbones
from pnoc_jax.models.affinity import AffinityNet

STATE = "aff"


def build_model(config: ml_collections.ConfigDict) -> AffinityNet:
    cfg = config.affinity
    return AffinityNet(
        backbone=cfg.backbone or config.model.backbone, output_stride=cfg.output_stride
    )


def make_optimizer(cfg: ml_collections.ConfigDict, total_steps: int):
    """SGD, lr·poly(0.9) and weight decay on every edge parameter (kernels, GroupNorm scales
    and offsets, the output bias: the reference's one parameter group, method.md §9); backbone
    frozen. Spec: momentum 0."""
    return optim.make_optimizer(
        optim.OptimizerConfig(
            lr=cfg.lr,
            total_steps=total_steps,
            weight_decay=cfg.weight_decay,
            momentum=cfg.momentum,
            poly_power=cfg.poly_power,
            lr_mult=(1.0, 1.0, 1.0, 1.0),
            decay_all=True,
            frozen=("backbone",),
        )
    )


def backbone_start(config: ml_collections.ConfigDict) -> backbones.BackboneStart:
    """The frozen backbone's start (`config.affinity.backbone_weights`): ImageNet weights
    (`config.model.pretrained` for the CAM network's architecture, "" = random) or the CAM
    network's ("train_cam")."""
    arch = config.affinity.backbone or config.model.backbone
    return backbones.BackboneStart.from_section(config, "train_affinity", "affinity", arch)


def load_variables(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """The trained AffinityNet's variables (host arrays)."""
    return weights.load(artifacts.weights_file(workdir, "train_affinity", STATE))


def attach_label(directory: str, example: dict) -> dict:
    """`aff_label` (uint8[H, W]): the image's affinity label PNG in `directory`; an image
    without image-level labels has none and gets an all-ignore map."""
    path = os.path.join(directory, f"{example['id']}.png")
    if fileio.exists(path) or example["labels"].sum() > 0:
        return {"aff_label": fileio.read_png(path)}
    return {"aff_label": np.full(example["image"].shape[:2], IGNORE, np.uint8)}


def affinity_update(
    state: TrainState,
    others: dict[str, TrainState],
    batch: dict,
    carry: None,
    step: jax.Array,
    *,
    model: AffinityNet,
    radius: int,
    num_labels: int,
) -> tuple[TrainState, dict, None]:
    """One SGD step of the edge layers on a batch {image [B,S,S,3], aff_label [B,S/4,S/4]}.

    Metrics: the loss terms, `lr` and `grad_norm` (edge layers only; the backbone is frozen).
    """
    del others, step

    def loss_fn(params):
        variables = {"params": params, "batch_stats": state.batch_stats}
        logits = model.apply(variables, batch["image"])
        terms = losses.affinity_loss(logits, batch["aff_label"], radius, num_labels)
        return terms["loss"], terms

    grads, metrics = jax.grad(loss_fn, has_aux=True)(state.params)
    state, stats = state.apply_gradients_with_stats(grads=grads)
    return state, {**metrics, **stats}, carry


def build_update(model: AffinityNet, mesh: Mesh, radius: int, num_labels: int) -> Update:
    """The jitted update: state replicated (donated), batch sharded along "data"."""
    fn = functools.partial(affinity_update, model=model, radius=radius, num_labels=num_labels)
    return Update(STATE, jit_update(fn, mesh))


def program(
    config: ml_collections.ConfigDict, mesh: Mesh, total_steps: int, workdir: str | None = None
) -> TrainingProgram:
    """The training program of `config.affinity` over `mesh` (`workdir` None: fresh
    variables, no weight file read; `pnoc_jax.plan` compiles it)."""
    cfg = config.affinity
    info = datasets.get_info(config.data.name)
    model = build_model(config)
    tx, step_stats = make_optimizer(cfg, total_steps)
    shape = (1, cfg.crop_size, cfg.crop_size, 3)
    init = backbone_start(config).initializer(workdir, model, shape)
    return TrainingProgram(
        one_network(STATE, model, tx, shape, mesh, config.seed, step_stats, init),
        [build_update(model, mesh, cfg.radius, info.num_classes + 1)],
        transforms.make_affinity_transform(cfg.crop_size, cfg.min_size, cfg.max_size),
        ("image", "aff_label"),
        cfg.batch_size,
    )


def run(
    config: ml_collections.ConfigDict,
    workdir: str,
    dataset: datasets.Dataset,
    on_step: Callable[[int], Any] | None = None,
) -> None:
    """Trains AffinityNet; checkpoints, metrics and weights under `<workdir>/train_affinity/`."""
    cfg = config.affinity
    split = config.affinity_labels.split
    mesh = distributed.make_mesh()
    source = pipeline.Attached(
        dataset.split(split, whole=True),
        functools.partial(attach_label, artifacts.affinity_label_dir(workdir, split)),
    )
    training = program(config, mesh, pipeline.section_steps(cfg, len(source)), workdir)
    pipeline.train(
        "train_affinity", cfg, source, training, config=config, mesh=mesh, workdir=workdir,
        on_step=on_step,
    )  # fmt: skip


def missing(
    config: ml_collections.ConfigDict, workdir: str, dataset: datasets.Dataset
) -> list[str]:
    del config, dataset
    return artifacts.missing([artifacts.weights_file(workdir, "train_affinity", STATE)])


def deps(config: ml_collections.ConfigDict) -> tuple[str, ...]:
    return ("affinity_labels", *backbone_start(config).deps())


def validate(config: ml_collections.ConfigDict, topology: config_lib.Topology) -> None:
    """Checks of `config.affinity`."""
    cfg, number, key = config.affinity, config_lib.check_number, "affinity"
    config_lib.check_choice(config, f"{key}.backbone", ("", *backbones.backbone_names()))
    config_lib.check_choice(config, f"{key}.output_stride", backbones.OUTPUT_STRIDES)
    config_lib.check_choice(config, f"{key}.backbone_weights", ("pretrained", "train_cam"))
    backbone_start(config).validate(config, datasets.get_info(config.data.name).needs_pretrained)
    config_lib.check_training(config, key, topology)
    number(config, f"{key}.crop_size", low=4, integer=True)
    config_lib.check(cfg.crop_size % 4 == 0, f"{key}.crop_size", cfg.crop_size, "a multiple of 4")
    number(config, f"{key}.radius", low=2, integer=True)
