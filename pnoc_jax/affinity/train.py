"""Stage `train_affinity`: train AffinityNet's edge layers on affinity labels (spec §9).

Data: the images of `config.affinity.split` with the affinity-label PNGs of stage
`affinity_labels`; random long-side resize, flip, normalise, random crop, labels to crop/4.
SGD (`config.affinity.momentum`, 0 in the spec) with poly decay on the edge layers only; the
backbone is frozen.
Runs on the shared `core.loop.train_loop` with one update; resumes from the latest checkpoint.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Sequence
from typing import Any

import jax
import ml_collections
import numpy as np
from absl import logging
from jax.sharding import Mesh

from pnoc_jax.affinity import loss as aff_loss
from pnoc_jax.cam import train as cam_train
from pnoc_jax.core import checkpoint, distributed, fileio, optim, rng
from pnoc_jax.core.loop import Update, jit_update, run_training
from pnoc_jax.core.train_state import TrainState, create_state
from pnoc_jax.data import datasets, pipeline, transforms
from pnoc_jax.models import convert
from pnoc_jax.models.affinity import AffinityNet

STAGE = "train_affinity"
STATE = "aff"


def label_dir(workdir: str, split: str) -> str:
    return os.path.join(workdir, "affinity_labels", split)


def build_model(config: ml_collections.ConfigDict) -> AffinityNet:
    cfg = config.affinity
    return AffinityNet(
        backbone=cfg.backbone or config.model.backbone, output_stride=cfg.output_stride
    )


def make_optimizer(cfg: ml_collections.ConfigDict, total_steps: int):
    """SGD, lr·poly(0.9) on every edge parameter; backbone frozen (spec §9: momentum 0).

    Deviation: `core.optim` decays only kernels/scales, so GN offsets and the output bias get
    no weight decay (the reference decays them too).
    """
    return optim.make_optimizer(
        optim.OptimizerConfig(
            lr=cfg.lr,
            total_steps=total_steps,
            weight_decay=cfg.weight_decay,
            momentum=cfg.momentum,
            poly_power=cfg.poly_power,
            lr_mult=(1.0, 1.0, 1.0, 1.0),
            frozen=("backbone",),
        )
    )


def backbone_init(
    config: ml_collections.ConfigDict, workdir: str, mesh: Mesh
) -> Callable[[dict], dict] | None:
    """Variables rewrite loading the frozen backbone: `config.affinity.backbone_weights`.

    "pretrained": `config.model.pretrained` (.npz ImageNet weights; random if empty, with a
    warning); "train_cam": the backbone of the trained CAM network (stage train_cam).
    """
    source = config.affinity.backbone_weights
    if source == "pretrained":
        if not config.model.pretrained:
            logging.warning("train_affinity: no config.model.pretrained; frozen RANDOM backbone")
            return None
        weights = convert.load_npz_weights(config.model.pretrained)
    elif source == "train_cam":
        backbone = config.affinity.backbone or config.model.backbone
        if backbone != config.model.backbone:
            raise ValueError(
                f"config.affinity.backbone={backbone!r} cannot load train_cam weights of "
                f"{config.model.backbone!r}"
            )
        cam_model = cam_train.build_model(config)
        trained = cam_train.load_classifier_variables(
            config, "train", os.path.join(workdir, "train_cam", "ckpt"), cam_model, mesh
        )
        weights = {col: {"backbone": trained[col]["backbone"]} for col in trained}
    else:
        raise ValueError(
            f"config.affinity.backbone_weights={source!r}: expected 'pretrained' or 'train_cam'"
        )
    return lambda variables: convert.merge_pretrained(variables, weights)


def abstract_state(config: ml_collections.ConfigDict, mesh: Mesh) -> TrainState:
    """Shape/sharding template of the AffinityNet train state (restore target)."""
    tx, _ = make_optimizer(config.affinity, 1)
    return cam_train.abstract_state(build_model(config), tx, mesh, config.affinity.crop_size)


def load_variables(config: ml_collections.ConfigDict, workdir: str, mesh: Mesh) -> dict:
    """Params and BN statistics of the trained AffinityNet (final checkpoint of the stage)."""
    like = {STATE: abstract_state(config, mesh)}
    _, restored = checkpoint.restore_final(os.path.join(workdir, STAGE, "ckpt"), like)
    return {"params": restored[STATE].params, "batch_stats": restored[STATE].batch_stats}


class LabelledSource(Sequence):
    """Examples of a split with their affinity label (`aff_label`, uint8[H, W]) attached.

    An image without image-level labels has no affinity label: it gets an all-ignore map.
    Picklable (grain workers).
    """

    def __init__(self, source: Sequence[dict], directory: str):
        self._source = source
        self._directory = directory

    def __len__(self) -> int:
        return len(self._source)

    def __getitem__(self, index: int) -> dict:
        example = dict(self._source[index])
        path = os.path.join(self._directory, f"{example['id']}.png")
        if os.path.exists(path) or example["labels"].sum() > 0:
            example["aff_label"] = fileio.read_png(path)
        else:
            example["aff_label"] = np.full(example["image"].shape[:2], 255, np.uint8)
        return example


def affinity_update(
    state: TrainState,
    others: dict[str, TrainState],
    batch: dict,
    carry: dict,
    step: jax.Array,
    *,
    model: AffinityNet,
    radius: int,
    num_labels: int,
) -> tuple[TrainState, dict, dict]:
    """One SGD step of the edge layers on a batch {image [B,S,S,3], aff_label [B,S/4,S/4]}."""
    del others, step

    def loss_fn(params):
        variables = {"params": params, "batch_stats": state.batch_stats}
        logits = model.apply(variables, batch["image"])
        terms = aff_loss.affinity_loss(logits, batch["aff_label"], radius, num_labels)
        return terms["loss"], terms

    grads, metrics = jax.grad(loss_fn, has_aux=True)(state.params)
    return state.apply_gradients(grads=grads), metrics, carry


def build_update(model: AffinityNet, mesh: Mesh, radius: int, num_labels: int) -> Update:
    """The jitted update: state replicated (donated), batch sharded along "data"."""
    fn = functools.partial(affinity_update, model=model, radius=radius, num_labels=num_labels)
    return Update(STATE, jit_update(fn, mesh))


def run(
    config: ml_collections.ConfigDict,
    workdir: str,
    on_step: Callable[[int], Any] | None = None,
) -> None:
    """Trains AffinityNet; checkpoints and metrics under `<workdir>/train_affinity/`."""
    cfg = config.affinity
    stage_dir = os.path.join(workdir, STAGE)
    mesh = distributed.make_mesh()
    if cfg.batch_size % jax.device_count():
        raise ValueError(
            f"config.affinity.batch_size={cfg.batch_size} must be a multiple of the device "
            f"count ({jax.device_count()})"
        )
    info = datasets.get_info(config.data.name)

    source = LabelledSource(pipeline.open_split(config, cfg.split), label_dir(workdir, cfg.split))
    local_batch = cfg.batch_size // jax.process_count()
    steps_per_epoch = int(
        distributed.allgather(np.array(pipeline.steps_per_epoch(len(source), local_batch))).min()
    )
    total_steps = cfg.get("steps", 0) or cfg.epochs * steps_per_epoch
    transform = transforms.make_affinity_transform(cfg.crop_size, cfg.min_size, cfg.max_size)
    batches = pipeline.train_batches(
        source,
        transform,
        local_batch,
        rng.data_seed(config.seed) + jax.process_index(),
        keys=("image", "aff_label"),
    )
    logging.info(
        "%s: %d examples on this process, %d steps/epoch, %d steps",
        STAGE,
        len(source),
        steps_per_epoch,
        total_steps,
    )

    model = build_model(config)
    tx, _ = make_optimizer(cfg, total_steps)
    shape = (1, cfg.crop_size, cfg.crop_size, 3)
    init = backbone_init(config, workdir, mesh)
    states = {STATE: create_state(model, tx, rng.init_key(config.seed), shape, mesh, init)}
    update = build_update(model, mesh, cfg.radius, info.num_classes + 1)

    run_training(
        stage_dir=stage_dir,
        states=states,
        updates=[update],
        batches=batches,
        total_steps=total_steps,
        mesh=mesh,
        ckpt_every=cfg.ckpt_every,
        log_every=cfg.log_every,
        description=STAGE,
        on_step=on_step,
    )
