"""Stage `train_saliency`: C²AM, or C²AM-H with hints from the P-NOC priors (method.md §7).

`config.saliency.method` picks the objective: "ccam" = sim_max(fg) + sim_min(bg, fg) + sim_max(bg)
(contrastive only), "ccamh" adds `hint_weight` · hint loss, whose hints are the max over each
image's classes of its `infer_cam` `hr_cam` (transformed with the image). SGD with the poly
schedule and the reference's parameter groups (backbone 1x/2x, disentangler 10x/20x).

Plain C²AM may come out with foreground and background swapped. After training, the reference's
border check (`saliency.maps.orientation`) runs on the first `ORIENTATION_IMAGES` images of the
split; the decision is written to `train_saliency/orientation.json` and `infer_saliency` applies
it (z -> -z). C²AM-H is anchored by its hints: the check is recorded, never applied.

Exports `weights/f.npz` (the CCAM variables).
"""

import functools
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging
from jax.sharding import Mesh
from PIL import Image

from pnoc_jax import config_lib
from pnoc_jax.core import artifacts, distributed, fileio, optim, scores
from pnoc_jax.core.loop import TrainingProgram, Update, jit_update, one_network
from pnoc_jax.core.train_state import TrainState, variables
from pnoc_jax.data import datasets, pipeline, transforms
from pnoc_jax.inference import predictor
from pnoc_jax.models import backbones
from pnoc_jax.models.ccam import CCAM
from pnoc_jax.saliency import losses, maps

STATE = "f"
METHODS = ("ccam", "ccamh")
ORIENTATION_IMAGES = 64  # images of the split the orientation check looks at


def backbone_name(config: ml_collections.ConfigDict) -> str:
    return config.saliency.backbone or config.model.backbone


def build_model(
    config: ml_collections.ConfigDict, dtype: str = "float32", remat: bool = False
) -> CCAM:
    cfg = config.saliency
    return CCAM(backbone_name(config), cfg.output_stride, dtype=jnp.dtype(dtype), remat=remat)


def backbone_start(config: ml_collections.ConfigDict) -> backbones.BackboneStart:
    """Where C²AM's backbone starts (`config.saliency.backbone_weights`): a trained classifier's
    (`train_oc` / `train_cam`, a stand-in for ImageNet weights where none exist), or ImageNet
    weights (`saliency.pretrained`, else `model.pretrained` for the CAM network's
    architecture; "" = random)."""
    return backbones.BackboneStart.from_section(
        config, "train_saliency", "saliency", backbone_name(config)
    )


def attach_hint(cam_dir: str, example: dict) -> dict:
    """`hint` (float32 [H, W]): the max over the image's classes of its `hr_cam` in `cam_dir`
    (zeros for an image without classes)."""
    shape = example["image"].shape[:2]
    if example["labels"].sum() == 0:
        return {"hint": np.zeros(shape, np.float32)}
    path = scores.locate(cam_dir, example["id"])
    hr_cam = scores.read(path, ("hr_cam",))["hr_cam"]
    if hr_cam.shape[1:] != shape:
        raise ValueError(f"{path}: hr_cam {hr_cam.shape[1:]} does not match the image {shape}")
    return {"hint": hr_cam.max(axis=0)}


def ccam_update(
    state: TrainState,
    others: dict[str, TrainState],
    batch: dict,
    carry: None,
    step: jax.Array,
    *,
    model: CCAM,
    alpha: float,
    hint_weight: float,
    hint_threshold: float,
    label_smoothing: float,
    hints: bool,
) -> tuple[TrainState, dict, None]:
    """One SGD step of C²AM (`hints=False`) or C²AM-H on {image [B,S,S,3], hint [B,S,S]}.

    The contrastive losses compare every pair of the global batch (the embeddings are gathered
    by the sharding), so the step is the same on 1 or N devices. Metrics: loss, the terms
    (`loss_pos_fg`, `loss_neg`, `loss_pos_bg`, `loss_hint`), `fg_fraction` (mean σ(z)), `lr`,
    `grad_norm`.
    """
    del others, step

    def loss_fn(params):
        (z, fg, bg), mutated = model.apply(
            {"params": params, "batch_stats": state.batch_stats},
            batch["image"],
            train=True,
            mutable=["batch_stats"],
        )
        terms = {
            "loss_pos_fg": losses.sim_max_loss(fg, alpha),
            "loss_neg": losses.sim_min_loss(bg, fg),
            "loss_pos_bg": losses.sim_max_loss(bg, alpha),
        }
        loss = terms["loss_pos_fg"] + terms["loss_neg"] + terms["loss_pos_bg"]
        if hints:
            resized = losses.resize_hints(batch["hint"], z.shape[1:])
            terms["loss_hint"] = losses.hint_loss(z, resized, hint_threshold, label_smoothing)
            loss = loss + hint_weight * terms["loss_hint"]
        metrics = {"loss": loss, **terms, "fg_fraction": jnp.mean(jax.nn.sigmoid(z))}
        return loss, (metrics, mutated["batch_stats"])

    grads, (metrics, batch_stats) = jax.grad(loss_fn, has_aux=True)(state.params)
    state, stats = state.apply_gradients_with_stats(grads=grads, batch_stats=batch_stats)
    return state, {**metrics, **stats}, carry


def build_update(config: ml_collections.ConfigDict, model: CCAM, mesh: Mesh) -> Update:
    """The jitted update of `config.saliency`: state replicated (donated), batch sharded."""
    cfg = config.saliency
    fn = functools.partial(
        ccam_update,
        model=model,
        alpha=cfg.alpha,
        hint_weight=cfg.hint_weight,
        hint_threshold=cfg.hint_threshold,
        label_smoothing=cfg.label_smoothing,
        hints=cfg.method == "ccamh",
    )
    return Update(STATE, jit_update(fn, mesh))


def make_optimizer(cfg: ml_collections.ConfigDict, total_steps: int):
    """SGD (`momentum`, 0 in the spec), poly decay, groups backbone 1x/2x, head 10x/20x;
    accumulated gradients summed, as the reference does."""
    return optim.make_optimizer(
        optim.OptimizerConfig(
            lr=cfg.lr,
            total_steps=total_steps // cfg.accumulate_steps,
            weight_decay=cfg.weight_decay,
            momentum=cfg.momentum,
            poly_power=cfg.poly_power,
            lr_mult=tuple(cfg.lr_mult),
            accumulate_steps=cfg.accumulate_steps,
            accumulation="sum",  # the reference sums the accumulated gradients (method.md §2)
        )
    )


def orientation_images(source: Sequence[dict], size: int, count: int) -> np.ndarray:
    """The first `count` images of `source`, resized to a `size` square (PIL bilinear, as in
    training) and normalised: float32 [N, size, size, 3]."""
    images = []
    for index in range(min(count, len(source))):
        image = Image.fromarray(np.asarray(source[index]["image"], np.uint8))
        image = np.asarray(image.resize((size, size), Image.Resampling.BILINEAR))
        images.append(transforms.normalize(image))
    return np.stack(images)


def probability_predictor(model: CCAM, model_variables: dict):
    """σ(z) [N, h, w] of a batch, jitted on this process's devices."""

    def predict(v, x):
        z, _, _ = model.apply(v, x, train=False)
        return jax.nn.sigmoid(z)

    return predictor.local_predictor(predict, model_variables)


def decide_orientation(
    config: ml_collections.ConfigDict, model: CCAM, model_variables: dict, source: Sequence[dict]
) -> dict:
    """The orientation record of the trained network (module docstring)."""
    cfg = config.saliency
    predict, multiple = probability_predictor(model, model_variables)
    images = orientation_images(source, cfg.crop_size, ORIENTATION_IMAGES)
    probabilities = []
    for start in range(0, len(images), 8 * multiple):
        chunk = images[start : start + 8 * multiple]
        padded = np.concatenate([chunk, np.zeros((-len(chunk) % multiple, *chunk.shape[1:]))])
        probabilities.extend(predict(padded.astype(np.float32))[: len(chunk)])
    record = maps.orientation(probabilities)
    record["method"] = cfg.method
    record["applied"] = bool(record["inverted"] and cfg.method == "ccam")
    if cfg.method == "ccamh":
        record["note"] = "C²AM-H is anchored by its hints: the check is recorded, not applied"
        if record["inverted"]:
            logging.warning(
                "train_saliency: the border check finds the C²AM-H maps inverted (border "
                "foreground %.2f); not applied (hints anchor the foreground)",
                record["border_foreground"],
            )
    return record


def read_orientation(workdir: str) -> float:
    """The sign infer_saliency applies to z: -1 for a C²AM found inverted, else +1."""
    path = artifacts.orientation_file(workdir)
    if not fileio.exists(path):
        raise FileNotFoundError(
            f"{path} missing: train_saliency did not finish; run it again to write it"
        )
    return -1.0 if fileio.read_json(path)["applied"] else 1.0


def program(
    config: ml_collections.ConfigDict, mesh: Mesh, total_steps: int, workdir: str | None = None
) -> TrainingProgram:
    """The training program of `config.saliency` over `mesh` (`workdir` None: fresh variables,
    no weight file read; `pnoc_jax.plan` compiles it)."""
    cfg = config.saliency
    model = build_model(config, cfg.dtype, config.runtime.remat)
    tx, step_stats = make_optimizer(cfg, total_steps)
    shape = (1, cfg.crop_size, cfg.crop_size, 3)
    init = backbone_start(config).initializer(workdir, model, shape)
    return TrainingProgram(
        one_network(STATE, model, tx, shape, mesh, config.seed, step_stats, init),
        [build_update(config, model, mesh)],
        transforms.SaliencyTransform(cfg.resize_size, cfg.crop_size),
        ("image", "hint") if cfg.method == "ccamh" else ("image",),
        cfg.batch_size,
    )


def run(
    config: ml_collections.ConfigDict,
    workdir: str,
    dataset: datasets.Dataset,
    on_step: Callable[[int], Any] | None = None,
) -> None:
    """Trains C²AM(-H); checkpoints, metrics, weights and orientation under train_saliency/."""
    cfg = config.saliency
    mesh = distributed.make_mesh()
    source = dataset.split(cfg.split, whole=True)
    train_source: Sequence[dict] = source
    if cfg.method == "ccamh":
        hints = functools.partial(attach_hint, artifacts.cam_dir(workdir, cfg.split))
        train_source = pipeline.Attached(source, hints)
    training = program(config, mesh, pipeline.section_steps(cfg, len(source)), workdir)
    states = pipeline.train(
        "train_saliency", cfg, train_source, training, config=config, mesh=mesh,
        workdir=workdir, on_step=on_step, detail=f"method {cfg.method}",
    )  # fmt: skip
    if distributed.is_chief():
        final = distributed.to_host(variables(states[STATE]))
        record = decide_orientation(config, build_model(config), final, source)
        fileio.write_json(artifacts.orientation_file(workdir), record)
        logging.info("train_saliency: orientation %s", record)
    distributed.barrier("train_saliency-orientation")


def missing(
    config: ml_collections.ConfigDict, workdir: str, dataset: datasets.Dataset
) -> list[str]:
    del config, dataset
    paths = [artifacts.weights_file(workdir, "train_saliency", STATE)]
    return artifacts.missing([*paths, artifacts.orientation_file(workdir)])


def deps(config: ml_collections.ConfigDict) -> tuple[str, ...]:
    """The priors' CAMs (C²AM-H hints) and the classifier whose backbone C²AM starts from."""
    hints = ("infer_cam",) if config.saliency.method == "ccamh" else ()
    return (*hints, *backbone_start(config).deps())


def validate(config: ml_collections.ConfigDict, topology: config_lib.Topology) -> None:
    """Checks of `config.saliency`."""
    cfg, key, number = config.saliency, "saliency", config_lib.check_number
    config_lib.check_choice(config, f"{key}.method", METHODS)
    config_lib.check_choice(config, f"{key}.split", datasets.get_info(config.data.name).splits)
    if cfg.method == "ccamh":
        config_lib.check(
            cfg.split in tuple(config.infer.splits),
            f"{key}.split",
            cfg.split,
            f"a split whose CAMs infer_cam makes (config.infer.splits={tuple(config.infer.splits)}"
            ") for C²AM-H's hints",
        )
    config_lib.check_choice(config, f"{key}.backbone", ("", *backbones.backbone_names()))
    config_lib.check_choice(config, f"{key}.output_stride", (8, 16))
    config_lib.check_choice(config, f"{key}.backbone_weights", backbones.BACKBONE_SOURCES)
    backbone_start(config).validate(config, datasets.get_info(config.data.name).needs_pretrained)
    config_lib.check_batch_and_duration(config, key, topology, min_batch=2)  # pairs to contrast
    number(config, f"{key}.lr", low=0, low_open=True)
    number(config, f"{key}.momentum", low=0, high=1, high_open=True)
    number(config, f"{key}.weight_decay", low=0)
    number(config, f"{key}.poly_power", low=0)
    mult = tuple(cfg.lr_mult)
    config_lib.check(
        len(mult) == 4 and all(isinstance(m, int | float) and m > 0 for m in mult),
        f"{key}.lr_mult",
        mult,
        "4 positive multipliers (backbone weight, backbone bias, head weight, head bias)",
    )
    number(config, f"{key}.crop_size", low=16, integer=True)
    number(config, f"{key}.resize_size", low=1, integer=True)
    number(config, f"{key}.alpha", low=0)
    number(config, f"{key}.hint_weight", low=0)
    number(config, f"{key}.hint_threshold", low=0, high=1)
    number(config, f"{key}.label_smoothing", low=0, high=1, high_open=True)
    config_lib.check_choice(config, f"{key}.dtype", ("float32", "bfloat16"))
