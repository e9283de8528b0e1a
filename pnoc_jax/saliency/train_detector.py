"""Stage `train_detector`: a saliency detector (PoolNet) trained on the C²AM(-H) masks (§7).

Data: the images of `config.detector.split` with their `infer_saliency` masks (PNG / 255) as
targets, at their own resolution times `input_scale`, randomly flipped. The reference trains at
batch 1 with 10 accumulated images; here a batch of `batch_size` images is padded onto one
`canvas` square (`data.transforms.DetectorTransform`) and the loss counts only the images'
pixels:

    loss = Σ_b Σ_{valid pixels} BCEWithLogits(logit, target) / B

which is the reference's per-image pixel sum averaged over the accumulated images, so batch 10
equals its `iter_size` 10 (and `accumulate_steps` A averages A such batches). Adam (torch
semantics: L2 weight decay added to the gradient) at a constant learning rate (the reference's
decay at epoch 15 is never reached in its 9 epochs); BatchNorm frozen (`net.eval()`).
Exports `weights/detector.npz`.

Deviation: padding is seen by the network (its pyramid pooling averages over the whole canvas),
so maps of small images differ from an unpadded run; infer_detector uses the same canvas, so
training and inference agree.
"""

import functools
import os
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import optax
from jax.sharding import Mesh

from pnoc_jax import config_lib
from pnoc_jax.core import artifacts, distributed, fileio, optim
from pnoc_jax.core.loop import TrainingProgram, Update, jit_update, one_network
from pnoc_jax.core.train_state import TrainState
from pnoc_jax.data import datasets, pipeline, transforms
from pnoc_jax.inference import tta
from pnoc_jax.models import backbones, poolnet
from pnoc_jax.models.poolnet import PoolNet
from pnoc_jax.saliency import losses

STATE = "detector"
FROZEN = ("bn",)  # BatchNorm statistics and affine parameters never move (`net.eval()`)
MIN_CANVAS = 16 * max(poolnet.FAM_POOL_SIZES)  # PoolNet's 8x8 pools need stride-16 maps >= 8


def build_model(
    config: ml_collections.ConfigDict, dtype: str = "float32", remat: bool = False
) -> PoolNet:
    cfg = config.detector
    return PoolNet(cfg.backbone, True, jnp.dtype(dtype), head_divisor=cfg.head_divisor, remat=remat)


def canvas(config: ml_collections.ConfigDict) -> int:
    """The square every image is padded onto, in training and inference."""
    cfg = config.detector
    return max(tta.canvas_size(cfg.max_image_size, cfg.input_scale), MIN_CANVAS)


def input_shape(config: ml_collections.ConfigDict) -> tuple[int, int, int, int]:
    side = canvas(config)
    return (1, side, side, 3)


def weights_path(workdir: str) -> str:
    return artifacts.weights_file(workdir, "train_detector", STATE)


def describe(config: ml_collections.ConfigDict) -> str:
    """What a detector weights file must hold, for errors."""
    cfg = config.detector
    return (
        f"a PoolNet with a {cfg.backbone} backbone and head widths / {cfg.head_divisor} "
        "(config.detector.backbone, head_divisor)"
    )


def make_optimizer(cfg: ml_collections.ConfigDict):
    """Adam at a constant lr, L2 weight decay added to the gradients (torch's `Adam`), BN frozen;
    `accumulate_steps` > 1 averages gradients (`optax.MultiSteps`)."""
    schedule = optax.constant_schedule(cfg.lr)
    adam = optax.chain(
        optax.add_decayed_weights(cfg.weight_decay),
        optax.scale_by_adam(b1=0.9, b2=0.999, eps=1e-8),
        optax.scale_by_learning_rate(schedule),
    )

    def labels(params):
        groups = optim.param_labels(params, FROZEN)
        return jax.tree.map(lambda g: "frozen" if g == "frozen" else "train", groups)

    tx = optax.multi_transform({"train": adam, "frozen": optax.set_to_zero()}, labels)
    if cfg.accumulate_steps > 1:
        tx = optax.MultiSteps(tx, every_k_schedule=cfg.accumulate_steps, use_grad_mean=True)
    return tx, optim.StepStats(schedule, cfg.accumulate_steps, FROZEN)


def attach_target(mask_dir: str, example: dict) -> dict:
    """`saliency` (float32 [H, W] in [0, 1]): the image's mask PNG in `mask_dir` / 255; a
    missing or mis-sized PNG is an error naming it."""
    path = os.path.join(mask_dir, f"{example['id']}.png")
    return {"saliency": fileio.read_saliency(path, example["image"].shape[:2])}


def detector_update(
    state: TrainState,
    others: dict[str, TrainState],
    batch: dict,
    carry: None,
    step: jax.Array,
    *,
    model: PoolNet,
) -> tuple[TrainState, dict, None]:
    """One Adam step on {image [B,C,C,3], target [B,C,C], valid [B,C,C]} (module docstring).

    Metrics: `loss` (pixel sums per image), `loss_per_pixel` (mean BCE over valid pixels),
    `lr`, `grad_norm`.
    """
    del others, step

    def loss_fn(params):
        logits = model.apply({"params": params, "batch_stats": state.batch_stats}, batch["image"])
        bce = losses.bce_with_logits(logits, batch["target"]) * batch["valid"]
        total = jnp.sum(bce)
        loss = total / batch["image"].shape[0]
        return loss, {
            "loss": loss,
            "loss_per_pixel": total / jnp.maximum(jnp.sum(batch["valid"]), 1),
        }

    grads, metrics = jax.grad(loss_fn, has_aux=True)(state.params)
    state, stats = state.apply_gradients_with_stats(grads=grads)
    return state, {**metrics, **stats}, carry


def build_update(model: PoolNet, mesh: Mesh) -> Update:
    return Update(STATE, jit_update(functools.partial(detector_update, model=model), mesh))


def program(
    config: ml_collections.ConfigDict, mesh: Mesh, total_steps: int, workdir: str | None = None
) -> TrainingProgram:
    """The training program of `config.detector` over `mesh` (`workdir` None: fresh
    variables, no weight file read; `pnoc_jax.plan` compiles it). Adam's step does not
    depend on `total_steps`."""
    del total_steps
    cfg = config.detector
    model = build_model(config, cfg.dtype, config.runtime.remat)
    tx, step_stats = make_optimizer(cfg)
    shape = input_shape(config)
    init = backbone_start(config).initializer(workdir, model, shape)
    return TrainingProgram(
        one_network(STATE, model, tx, shape, mesh, config.seed, step_stats, init),
        [build_update(model, mesh)],
        transforms.DetectorTransform(canvas(config), cfg.input_scale),
        ("image", "target", "valid"),
        cfg.batch_size,
    )


def run(
    config: ml_collections.ConfigDict,
    workdir: str,
    dataset: datasets.Dataset,
    on_step: Callable[[int], Any] | None = None,
) -> None:
    """Trains the detector; checkpoints, metrics and weights under `<workdir>/train_detector/`."""
    cfg = config.detector
    mesh = distributed.make_mesh()
    mask_dir = artifacts.saliency_png_dir(workdir, "infer_saliency", cfg.split)
    source = pipeline.Attached(
        dataset.split(cfg.split, whole=True),
        functools.partial(attach_target, mask_dir),
    )
    training = program(config, mesh, pipeline.section_steps(cfg, len(source)), workdir)
    pipeline.train(
        "train_detector", cfg, source, training, config=config, mesh=mesh, workdir=workdir,
        on_step=on_step, detail=f"canvas {canvas(config)}",
    )  # fmt: skip


def backbone_start(config: ml_collections.ConfigDict) -> backbones.BackboneStart:
    """Where PoolNet's backbone starts (`config.detector.backbone_weights`): ImageNet weights of
    its own architecture (`detector.pretrained` only: the stage does not read `config.model`),
    or a trained classifier's."""
    cfg = config.detector
    return backbones.BackboneStart.from_section(
        config, "train_detector", "detector", cfg.backbone, fallback=False
    )


def missing(
    config: ml_collections.ConfigDict, workdir: str, dataset: datasets.Dataset
) -> list[str]:
    del config, dataset
    return artifacts.missing([weights_path(workdir)])


def deps(config: ml_collections.ConfigDict) -> tuple[str, ...]:
    """The masks it learns from, and the classifier whose backbone it starts from."""
    return ("infer_saliency", *backbone_start(config).deps())


def validate(config: ml_collections.ConfigDict, topology: config_lib.Topology) -> None:
    """Checks of `config.detector`."""
    cfg, key, number = config.detector, "detector", config_lib.check_number
    config_lib.check(
        cfg.split in tuple(config.saliency_infer.splits),
        f"{key}.split",
        cfg.split,
        f"a split whose masks infer_saliency makes (config.saliency_infer.splits="
        f"{tuple(config.saliency_infer.splits)})",
    )
    config_lib.check_choice(config, f"{key}.backbone", backbones.backbone_names())
    config_lib.check_choice(config, f"{key}.backbone_weights", backbones.BACKBONE_SOURCES)
    backbone_start(config).validate(config, datasets.get_info(config.data.name).needs_pretrained)
    number(config, f"{key}.head_divisor", low=1, integer=True)
    config_lib.check(
        512 % cfg.head_divisor == 0 and 128 % cfg.head_divisor == 0,
        f"{key}.head_divisor",
        cfg.head_divisor,
        "a divisor of PoolNet's head widths 128, 256 and 512 (1, 2, 4, ..., 128)",
    )
    config_lib.check_batch_and_duration(config, key, topology)
    number(config, f"{key}.lr", low=0, low_open=True)
    number(config, f"{key}.weight_decay", low=0)
    number(config, f"{key}.max_image_size", low=1, integer=True)
    number(config, f"{key}.input_scale", low=0, low_open=True)
    config_lib.check_choice(config, f"{key}.dtype", ("float32", "bfloat16"))
