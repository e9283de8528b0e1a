"""Stages `train_segmentation` and `train_segmentation_gt`: DeepLab trained on the random-walk
pseudo-labels, or on the ground-truth masks (the fully supervised bound) (method.md §10).

Both read `config.segmentation`; only the labels differ. Data: the images of `split` with their
label maps, random long-side resize [min_size, max_size] (bicubic / nearest), flip,
`augment` (colorjitter), normalise, random crop `crop_size` (pad 0 / 255). Loss: cross-entropy
ignoring 255, label smoothing (DeepLabV2: the sum over its MSC outputs, labels nearest-resized
to each). SGD (momentum, Nesterov) with poly decay, head parameters 10x / 20x.

Every `validate_every` epochs the network predicts `val_split` (single scale, no flip) and is
scored against that split's pseudo-labels (ground truth for the *_gt stage), as the reference
chooses its checkpoint; `weights/best.npz` keeps the best, `validation.jsonl` every score.
Training itself is `core.loop.run_training`, run to each validation point in turn, so an
interrupted stage resumes at its last checkpoint and never revalidates a scored point.
Exports `weights/{f,best}.npz`, `weights/model.json` (the architecture, read by
`infer_segmentation` and `python -m pnoc_jax.predict`) and `metrics.json` (the best score).
"""

import dataclasses
import functools
import json
import os
from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging
from PIL import Image

from pnoc_jax import config_lib
from pnoc_jax.core import artifacts, distributed, fileio, optim, rng, weights
from pnoc_jax.core.checkpoint import Checkpointer
from pnoc_jax.core.errors import UserError
from pnoc_jax.core.loop import TrainingProgram, Update, jit_update, one_network, run_training
from pnoc_jax.core.train_state import TrainState, variables
from pnoc_jax.data import datasets, pipeline, transforms
from pnoc_jax.evaluation import miou
from pnoc_jax.evaluation.confusion import ConfusionSum
from pnoc_jax.inference import dense, tta
from pnoc_jax.models import backbones
from pnoc_jax.models.deeplab import DeepLabV2
from pnoc_jax.segmentation import losses
from pnoc_jax.segmentation import model as seg_model

LABELS = ("pseudo", "ground_truth")
# The stage names of each kind of labels: (train, infer, eval).
STAGES = {
    "pseudo": ("train_segmentation", "infer_segmentation", "eval_segmentation"),
    "ground_truth": ("train_segmentation_gt", "infer_segmentation_gt", "eval_segmentation_gt"),
}
STATE = "f"


# ---------------------------------------------------------------------------- data


def attach_label(label_dir: str, example: dict) -> dict:
    """`mask`: the image's pseudo-label PNG in `label_dir`, checked against the image's size."""
    path = os.path.join(label_dir, f"{example['id']}.png")
    label = fileio.read_png(path)
    if label.shape != example["image"].shape[:2]:
        raise ValueError(
            f"{path}: label map {label.shape} does not match its image {example['image'].shape[:2]}"
        )
    return {"mask": label}


def labelled_split(
    dataset: datasets.Dataset, workdir: str, labels: str, split: str, whole: bool = False
) -> Sequence[dict]:
    """This process's share of `split` (all of it if `whole`) whose `mask` is the label map a
    stage trains on: the pseudo-labels, or (labels "gt") the ground truth."""
    source = dataset.split(split, whole=whole)
    if labels != "pseudo":
        return source
    label_dir = artifacts.pseudo_label_dir(workdir, split)
    return pipeline.Attached(source, functools.partial(attach_label, label_dir))


# ---------------------------------------------------------------------------- the update


def segmentation_update(
    state: TrainState,
    others: dict[str, TrainState],
    batch: dict,
    carry: None,
    step: jax.Array,
    *,
    model: nn.Module,
    label_smoothing: float,
    seed: int,
) -> tuple[TrainState, dict, None]:
    """One SGD step on {image [B, S, S, 3], mask [B, S, S]}. Metrics: loss, lr, grad_norm."""
    del others
    key = rng.step_key(seed, rng.Stream.TRAIN, step)
    x, y = batch["image"], batch["mask"]

    def loss_fn(params):
        v = {"params": params, "batch_stats": state.batch_stats}
        if isinstance(model, DeepLabV2):
            outputs, updated = model.apply(v, x, train=True, method="msc", mutable=["batch_stats"])
            loss = losses.msc_cross_entropy(outputs, y, label_smoothing)
        else:
            logits, updated = model.apply(
                v, x, train=True, rngs={"dropout": key}, mutable=["batch_stats"]
            )
            loss = losses.cross_entropy(logits, y, label_smoothing)
        return loss, updated.get("batch_stats", state.batch_stats)

    (loss, batch_stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    state, stats = state.apply_gradients_with_stats(grads=grads, batch_stats=batch_stats)
    return state, {"loss": loss, **stats}, carry


def build_update(model: nn.Module, mesh, label_smoothing: float, seed: int) -> Update:
    fn = functools.partial(
        segmentation_update, model=model, label_smoothing=label_smoothing, seed=seed
    )
    return Update(STATE, jit_update(fn, mesh))


# ---------------------------------------------------------------------------- validation


def fit_to_canvas(
    image: np.ndarray, label: np.ndarray, canvas: int
) -> tuple[np.ndarray, np.ndarray]:
    """An image (PIL bicubic) and its label map (nearest) shrunk so the longer side is at most
    `canvas`; unchanged when they fit."""
    h, w = image.shape[:2]
    if max(h, w) <= canvas:
        return image, label
    scale = canvas / max(h, w)
    size = (max(1, min(canvas, round(w * scale))), max(1, min(canvas, round(h * scale))))
    image = np.asarray(Image.fromarray(image).resize(size, Image.Resampling.BICUBIC))
    label = np.asarray(Image.fromarray(label).resize(size, Image.Resampling.NEAREST))
    return image, label


class Validator:
    """Confusion matrix of a split's single-scale predictions (no flip, no CRF) against its
    label maps, summed over processes: the score that picks the kept checkpoint.

    Images are padded onto one `canvas`² (those larger are shrunk to fit, with their labels),
    so the network compiles once. Runs on this process's devices.
    """

    def __init__(
        self,
        model: nn.Module,
        source: Sequence[dict],
        canvas: int,
        num_labels: int,
        batch_size: int,
    ):
        self._source, self._canvas, self._labels = source, canvas, num_labels
        self._batch = batch_size
        mesh = distributed.make_mesh(jax.local_devices())
        self._repl, self._data = distributed.replicated(mesh), distributed.data_sharded(mesh)
        self._multiple = len(jax.local_devices())
        forward = seg_model.inference_fn(model)
        self._predict = jax.jit(
            lambda v, batch: jnp.argmax(forward(v, batch), axis=-1).astype(jnp.uint8),
            in_shardings=(self._repl, self._data),
            out_shardings=self._data,
        )

    def __call__(self, state: TrainState) -> np.ndarray:
        v = jax.device_put(distributed.to_host(variables(state)), self._repl)
        total = ConfusionSum(self._labels)
        for start in range(0, len(self._source), self._batch):
            pairs = [
                fit_to_canvas(e["image"], e["mask"], self._canvas)
                for e in (
                    self._source[i]
                    for i in range(start, min(start + self._batch, len(self._source)))
                )
            ]
            batch = dense.on_canvas([p[0] for p in pairs], self._canvas, self._multiple, flip=False)
            # placed explicitly: jit refuses host arrays with a sharding in multi-process runs
            predicted = np.asarray(self._predict(v, jax.device_put(batch, self._data)))
            for i, (image, label) in enumerate(pairs):
                h, w = image.shape[:2]
                total.add(miou.confusion(label, predicted[i, :h, :w], self._labels))
        return total.total()


def validation_points(every: int, total: int) -> list[int]:
    """Steps after which the network is validated: every `every` steps, and the last step."""
    return sorted({*range(every, total + 1, every), total})


def read_history(path: str) -> list[dict]:
    if not fileio.exists(path):
        return []
    return [json.loads(line) for line in fileio.read_text(path).splitlines() if line.strip()]


# ---------------------------------------------------------------------------- the stage


def backbone_start(config: ml_collections.ConfigDict, stage: str) -> backbones.BackboneStart:
    """Where the backbone starts (`config.segmentation.backbone_weights`): a trained
    classifier's, or ImageNet weights: `config.segmentation.pretrained`, else
    `config.model.pretrained` when the backbone is the CAM network's ("" = random)."""
    arch = config.segmentation.backbone or config.model.backbone
    return backbones.BackboneStart.from_section(config, stage, "segmentation", arch)


def make_optimizer(cfg: ml_collections.ConfigDict, total_steps: int):
    return optim.make_optimizer(
        optim.OptimizerConfig(
            lr=cfg.lr,
            total_steps=total_steps,
            weight_decay=cfg.weight_decay,
            momentum=cfg.momentum,
            nesterov=cfg.nesterov,
            poly_power=cfg.poly_power,
            lr_mult=tuple(cfg.lr_mult),
            frozen=("bn",) if cfg.frozen_bn else (),
        )
    )


def program(
    config: ml_collections.ConfigDict,
    mesh,
    total_steps: int,
    workdir: str | None = None,
    *,
    stage: str = STAGES["pseudo"][0],
) -> TrainingProgram:
    """The training program of `config.segmentation` over `mesh` for `stage` (its backbone's
    start; `workdir` None: fresh variables, no weight file read; `pnoc_jax.plan` compiles it).
    The pseudo-label and ground-truth stages train the same program."""
    cfg = config.segmentation
    model = seg_model.model_spec(config).build(cfg.frozen_bn, cfg.dtype, config.runtime.remat)
    tx, step_stats = make_optimizer(cfg, total_steps)
    shape = (1, cfg.crop_size, cfg.crop_size, 3)
    init = backbone_start(config, stage).initializer(workdir, model, shape)
    return TrainingProgram(
        one_network(STATE, model, tx, shape, mesh, config.seed, step_stats, init),
        [build_update(model, mesh, cfg.label_smoothing, config.seed)],
        transforms.make_classification_transform(
            cfg.crop_size, cfg.min_size, cfg.max_size, cfg.augment
        ),
        ("image", "mask"),
        cfg.batch_size,
    )


def run(
    config: ml_collections.ConfigDict,
    workdir: str,
    dataset: datasets.Dataset,
    *,
    labels: str,
    on_step: Callable[[int], Any] | None = None,
) -> None:
    """Trains on `labels` ("pseudo" | "ground_truth"); outputs under `<workdir>/<stage>/`."""
    cfg = config.segmentation
    stage = STAGES[labels][0]
    mesh = distributed.make_mesh()
    spec = seg_model.model_spec(config)
    source = labelled_split(dataset, workdir, labels, cfg.split, whole=True)
    steps = pipeline.section_steps(cfg, len(source))
    training = program(config, mesh, steps, workdir, stage=stage)
    plan = pipeline.section_input(
        stage,
        cfg,
        source,
        training.transform,
        seed=config.seed,
        keys=training.keys,
        detail=f"{cfg.model} on {labels} labels",
    )
    states = training.make_states()
    (update,) = training.updates
    validator = Validator(
        spec.build(frozen_bn=True, dtype=cfg.dtype),
        labelled_split(dataset, workdir, labels, cfg.val_split),
        tta.canvas_size(cfg.crop_size, 1.0),
        spec.num_classes,
        config.runtime.predict_batch_size,
    )
    history_path = artifacts.validation_file(workdir, stage)
    history = read_history(history_path)
    if history and artifacts.damage(artifacts.segmentation_weights_file(workdir, stage)):
        export_kept(workdir, stage, history, states)
    scored = {row["step"] for row in history}
    best = max((row["miou"] for row in history), default=-1.0)
    # A split smaller than one batch has no whole epoch: validated at the end only.
    every = cfg.validate_every * plan.steps_per_epoch or plan.total_steps
    for end in validation_points(every, plan.total_steps):
        if end in scored:
            continue
        states = run_training(
            workdir=workdir,
            stage=stage,
            states=states,
            updates=[update],
            plan=dataclasses.replace(plan, total_steps=end),
            mesh=mesh,
            runtime=config.runtime,
            on_step=on_step,
        )
        reached = int(jax.device_get(states[STATE].step))
        if reached != end:
            raise RuntimeError(
                f"{stage}: the checkpoint in {artifacts.checkpoint_dir(workdir, stage)} is at step "
                f"{reached}, past the unscored validation point {end} ({history_path} lacks it); "
                f"delete the stage folder to retrain it"
            )
        scores = miou.scores(validator(states[STATE]))
        improved = scores["miou"] > best
        best = max(best, scores["miou"])
        row = {
            "step": end,
            "epoch": end / plan.steps_per_epoch,
            "miou": scores["miou"],
            "best": best,
            "improved": improved,
        }
        history.append(row)
        logging.info(
            "%s: step %d, %s mIoU on %s %.2f (best %.2f)",
            stage,
            end,
            "pseudo-label" if labels == "pseudo" else "ground-truth",
            cfg.val_split,
            100 * scores["miou"],
            100 * best,
        )
        if distributed.is_chief():
            if improved:
                host = distributed.to_host(variables(states[STATE]))
                weights.save(host, artifacts.segmentation_weights_file(workdir, stage))
            lines = "".join(json.dumps(r, sort_keys=True) + "\n" for r in history)
            fileio.write_text(history_path, lines)
        distributed.barrier(f"{stage}-validation-{end}")
    if distributed.is_chief():
        fileio.write_json(artifacts.model_file(workdir, stage), spec.to_json())
        top = max(history, key=lambda r: (r["miou"], -r["step"]))
        fileio.write_json(
            artifacts.metrics_file(workdir, stage),
            {
                "val_split": cfg.val_split,
                "labels": labels,
                "best_miou": top["miou"],
                "best_step": top["step"],
                "best_epoch": top["epoch"],
                "validations": len(history),
            },
        )
    distributed.barrier(f"{stage}-done")


def export_kept(
    workdir: str, stage: str, history: list[dict], states: dict[str, TrainState]
) -> None:
    """Writes `weights/best.npz` again from the checkpoint of the best validation in `history`,
    when the file was deleted or damaged after the validations; a UserError saying what to do
    when Orbax no longer keeps that step (it keeps the last two)."""
    path = artifacts.segmentation_weights_file(workdir, stage)
    top = max(history, key=lambda r: (r["miou"], -r["step"]))
    ckpt = Checkpointer(artifacts.checkpoint_dir(workdir, stage), save_every=1)
    try:
        if top["step"] not in ckpt.manager.all_steps():
            raise UserError(
                f"{path} is {artifacts.damage(path)} and the checkpoint it was kept from (step "
                f"{top['step']}) is gone from {ckpt.directory}: move "
                f"{artifacts.stage_dir(workdir, stage)} aside to train the stage again"
            )
        kept = ckpt.restore(top["step"], states)[STATE]
    finally:
        ckpt.close()
    if distributed.is_chief():
        weights.save(distributed.to_host(variables(kept)), path)
    logging.warning("%s: %s written again from the checkpoint of step %d", stage, path, top["step"])
    distributed.barrier(f"{stage}-export-kept")


def train_segmentation(
    config: ml_collections.ConfigDict, workdir: str, dataset: datasets.Dataset, **kwargs: Any
) -> None:
    run(config, workdir, dataset, labels="pseudo", **kwargs)


def train_segmentation_gt(
    config: ml_collections.ConfigDict, workdir: str, dataset: datasets.Dataset, **kwargs: Any
) -> None:
    run(config, workdir, dataset, labels="ground_truth", **kwargs)


def headline(metrics: dict) -> str:
    what = "pseudo-label" if metrics["labels"] == "pseudo" else "ground-truth"
    return (
        f"kept checkpoint: epoch {metrics['best_epoch']:g} (step {metrics['best_step']}), "
        f"{what} mIoU ({metrics['val_split']}) {100 * metrics['best_miou']:.2f}"
    )


def missing_for(
    labels: str,
) -> Callable[[ml_collections.ConfigDict, str, datasets.Dataset], list[str]]:
    """The stage's outputs that do not exist: the kept weights, model.json, the scores."""
    stage = STAGES[labels][0]

    def missing(
        config: ml_collections.ConfigDict, workdir: str, dataset: datasets.Dataset
    ) -> list[str]:
        del config, dataset
        return artifacts.missing(
            [
                artifacts.segmentation_weights_file(workdir, stage),
                artifacts.model_file(workdir, stage),
                artifacts.validation_file(workdir, stage),
                artifacts.metrics_file(workdir, stage),
            ]
        )

    return missing


def deps_for(labels: str) -> Callable[[ml_collections.ConfigDict], tuple[str, ...]]:
    """The pseudo-labels' stage (random_walk), and the stage whose backbone starts it."""

    def deps(config: ml_collections.ConfigDict) -> tuple[str, ...]:
        own = backbone_start(config, STAGES[labels][0]).deps()
        return (("random_walk",) if labels == "pseudo" else ()) + own

    return deps


def validate(config: ml_collections.ConfigDict, topology: config_lib.Topology) -> None:
    """Checks of `config.segmentation`."""
    cfg, key = config.segmentation, "segmentation"
    check, number = config_lib.check, config_lib.check_number
    config_lib.check_choice(config, f"{key}.model", seg_model.MODELS)
    config_lib.check_choice(config, f"{key}.backbone", ("", *backbones.backbone_names()))
    config_lib.check_choice(config, f"{key}.output_stride", (8, 16))
    rates = tuple(cfg.atrous_rates)
    count = 3 if cfg.model == "deeplabv3plus" else None
    check(
        all(isinstance(r, int) and not isinstance(r, bool) and r > 0 for r in rates)
        and (not rates or count is None or len(rates) == count),
        f"{key}.atrous_rates",
        rates,
        "() for the model's rates, or positive integers"
        + (" (3 of them for deeplabv3plus)" if count else ""),
    )
    for name in ("head_channels", "low_level_channels"):
        number(config, f"{key}.{name}", low=4, integer=True)
        check(cfg[name] % 4 == 0, f"{key}.{name}", cfg[name], "a multiple of 4 (GroupNorm(4))")
    config_lib.check_choice(config, f"{key}.backbone_weights", backbones.BACKBONE_SOURCES)
    start = backbone_start(config, "train_segmentation")
    start.validate(config, datasets.get_info(config.data.name).needs_pretrained)
    splits = datasets.get_info(config.data.name).splits
    config_lib.check_choice(config, f"{key}.split", splits)
    config_lib.check_choice(config, f"{key}.val_split", splits)
    number(config, f"{key}.validate_every", low=1, integer=True)
    config_lib.check_training(config, key, topology)
    config_lib.check_sgd_groups(config, key)
    number(config, f"{key}.label_smoothing", low=0, high=1, high_open=True)
    config_lib.check_choice(config, f"{key}.dtype", ("float32", "bfloat16"))
    transforms.check_augment(config, f"{key}.augment")
    number(config, f"{key}.crop_size", low=16, integer=True)


def validate_pseudo_labels(
    config: ml_collections.ConfigDict, topology: config_lib.Topology
) -> None:
    """train_segmentation reads the pseudo-labels of its training and validation splits."""
    del topology
    splits = tuple(config.rw.splits)
    for name in ("split", "val_split"):
        value = config.segmentation[name]
        config_lib.check(
            value in splits,
            f"segmentation.{name}",
            value,
            f"a split with pseudo-labels, one of config.rw.splits {splits}",
        )
