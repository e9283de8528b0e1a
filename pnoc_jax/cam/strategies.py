"""CAM training strategies as compositions of loss terms (spec §2–§5).

| strategy | generator loss f                              | second network           |
|----------|-----------------------------------------------|--------------------------|
| cam      | cls                                           | -                        |
| puzzle   | cls + p + λ_re·re                             | -                        |
| occse    | cls + λ_cse·o   (soft erasing, frozen OC)     | OC, frozen               |
| poc      | cls + p + λ_re·re + λ_cse·o                   | OC, frozen               |
| pnoc     | cls + p + λ_re·re + λ_cse·o                   | noc, trained adversarially|

P-NOC's noc is updated by its own jitted function over its own optax state on the hard-masked
image x ∘ [ψ(A^r) <= δ_noc] against the full (smoothed) labels, weighted by λ_noc. With
`noc_cse_gradient` the noc update also receives ∇_noc of λ_cse·o from the generator's loss, as
the official code does (spec §5.4); the generator update itself never changes noc.
"""

import dataclasses
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.sharding import Mesh

from pnoc_jax.cam import losses
from pnoc_jax.core.loop import Update, jit_update
from pnoc_jax.core.train_state import TrainState

STRATEGIES = ("cam", "puzzle", "occse", "poc", "pnoc")


@dataclasses.dataclass(frozen=True)
class StrategyConfig:
    name: str
    total_steps: int  # iterations (mini-batches), the time axis of the λ schedules
    label_smoothing: float = 0.0
    # Puzzle: λ_re ramps re_start -> re_end over the first re_fraction of training.
    re_start: float = 0.0
    re_end: float = 4.0
    re_fraction: float = 0.5
    # OC-CSE: λ_cse ramps cse_start -> cse_end over cse_fraction.
    cse_start: float = 0.3
    cse_end: float = 1.0
    cse_fraction: float = 1.0
    # P-NOC: λ_noc ramps noc_start -> noc_end over noc_fraction; hard-mask threshold δ_noc.
    noc_start: float = 0.0
    noc_end: float = 1.0
    noc_fraction: float = 1.0
    noc_threshold: float = 0.2
    noc_every: int = 1
    noc_cse_gradient: bool = True

    @property
    def puzzle(self) -> bool:
        return self.name in ("puzzle", "poc", "pnoc")

    @property
    def erasing(self) -> bool:
        return self.name in ("occse", "poc", "pnoc")

    @property
    def adversarial(self) -> bool:
        return self.name == "pnoc"


def needs_oc(name: str) -> bool:
    """Whether a strategy trains against an ordinary classifier."""
    return name in ("occse", "poc", "pnoc")


def reads_oc_checkpoint(section) -> bool:
    """Whether a training config section reads a trained OC: as the OC or as f's backbone."""
    return needs_oc(section.strategy) or section.get("init_backbone_from") == "train_oc"


def _forward(model: nn.Module, params, batch_stats, x, train: bool):
    """Returns (logits, cams, new_batch_stats); BN statistics update only when training."""
    variables = {"params": params, "batch_stats": batch_stats}
    if not train:
        logits, cams = model.apply(variables, x, train=False)
        return logits, cams, batch_stats
    (logits, cams), updated = model.apply(variables, x, train=True, mutable=["batch_stats"])
    return logits, cams, updated["batch_stats"]


def generator_loss(
    params,
    oc_params,
    *,
    batch_stats,
    oc_batch_stats,
    model: nn.Module,
    oc_model: nn.Module | None,
    batch: dict,
    key: jax.Array,
    step: jax.Array,
    cfg: StrategyConfig,
):
    """The generator's loss for one batch; returns (loss, (metrics, batch_stats, carry))."""
    x, y = batch["image"], batch["labels"]
    targets = losses.smooth_labels(y, cfg.label_smoothing)
    logits, cams, batch_stats = _forward(model, params, batch_stats, x, train=True)
    cls = losses.multilabel_soft_margin(logits, targets)
    loss, metrics, carry = cls, {"loss_cls": cls}, {}

    if cfg.puzzle:
        _, tile_cams, batch_stats = _forward(model, params, batch_stats, losses.tile(x), True)
        merged = losses.merge(tile_cams)
        p = losses.multilabel_soft_margin(jnp.mean(merged, axis=(1, 2)), targets)
        re = losses.reconstruction_loss(cams, merged, y)
        lambda_re = losses.linear_ramp(
            step, cfg.total_steps, cfg.re_start, cfg.re_end, cfg.re_fraction
        )
        loss = loss + p + lambda_re * re
        metrics.update(loss_p=p, loss_re=re, lambda_re=lambda_re)

    if cfg.erasing:
        classes = losses.sample_erased_class(key, y)
        maps = losses.class_maps(cams, classes, x.shape[1], x.shape[2])
        erased = x * losses.soft_erasing_mask(maps)[..., None].astype(x.dtype)
        oc_logits, _, _ = _forward(oc_model, oc_params, oc_batch_stats, erased, train=False)
        o_targets = losses.smooth_labels(losses.remove_class(y, classes), cfg.label_smoothing)
        o = losses.multilabel_soft_margin(oc_logits, o_targets)
        lambda_cse = losses.linear_ramp(
            step, cfg.total_steps, cfg.cse_start, cfg.cse_end, cfg.cse_fraction
        )
        loss = loss + lambda_cse * o
        metrics.update(loss_cse=o, lambda_cse=lambda_cse)
        if cfg.adversarial:
            keep = losses.hard_keep_mask(jax.lax.stop_gradient(maps), cfg.noc_threshold)
            carry["keep_mask"] = keep

    metrics["loss"] = loss
    return loss, (metrics, batch_stats, carry)


def generator_update(
    state: TrainState,
    others: dict[str, TrainState],
    batch: dict,
    carry: dict,
    step: jax.Array,
    *,
    model: nn.Module,
    oc_model: nn.Module | None,
    cfg: StrategyConfig,
    seed: int,
) -> tuple[TrainState, dict, dict]:
    """One generator (f) step. Returns the noc gradient in `carry` when P-NOC leaks it."""
    from pnoc_jax.core import rng

    oc = others.get("oc")
    oc_params = oc.params if oc is not None else {}
    oc_stats = oc.batch_stats if oc is not None else {}
    key = rng.step_key(seed, rng.Stream.TRAIN, step)
    loss_fn = functools.partial(
        generator_loss,
        batch_stats=state.batch_stats,
        oc_batch_stats=oc_stats,
        model=model,
        oc_model=oc_model,
        batch=batch,
        key=key,
        step=step,
        cfg=cfg,
    )
    with_noc_grad = cfg.adversarial and cfg.noc_cse_gradient
    argnums = (0, 1) if with_noc_grad else 0
    grads, (metrics, batch_stats, carry) = jax.grad(loss_fn, argnums=argnums, has_aux=True)(
        state.params, oc_params
    )
    if with_noc_grad:
        grads, carry["noc_grads"] = grads
    state = state.apply_gradients(grads=grads, batch_stats=batch_stats)
    return state, metrics, carry


def noc_update(
    state: TrainState,
    others: dict[str, TrainState],
    batch: dict,
    carry: dict,
    step: jax.Array,
    *,
    model: nn.Module,
    cfg: StrategyConfig,
) -> tuple[TrainState, dict, dict]:
    """One noc step on x ∘ keep_mask (hard erasing of the generator's class-r CAM)."""
    x, y = batch["image"], batch["labels"]
    masked = x * carry["keep_mask"][..., None].astype(x.dtype)
    targets = losses.smooth_labels(y, cfg.label_smoothing)
    lambda_noc = losses.linear_ramp(
        step, cfg.total_steps, cfg.noc_start, cfg.noc_end, cfg.noc_fraction
    )

    def loss_fn(params):
        logits, _, _ = _forward(model, params, state.batch_stats, masked, train=False)
        loss = losses.multilabel_soft_margin(logits, targets)
        return lambda_noc * loss, loss

    grads, noc_loss = jax.grad(loss_fn, has_aux=True)(state.params)
    if "noc_grads" in carry:
        grads = jax.tree.map(jnp.add, grads, carry["noc_grads"])
    state = state.apply_gradients(grads=grads)
    return state, {"loss_noc": noc_loss, "lambda_noc": lambda_noc}, carry


def build_updates(
    cfg: StrategyConfig,
    *,
    model: nn.Module,
    oc_model: nn.Module | None,
    mesh: Mesh,
    seed: int,
) -> list[Update]:
    """The jitted updates of a strategy: always the generator; for P-NOC also noc."""
    gen = functools.partial(generator_update, model=model, oc_model=oc_model, cfg=cfg, seed=seed)
    updates = [Update("f", jit_update(gen, mesh))]
    if cfg.adversarial:
        noc = functools.partial(noc_update, model=oc_model, cfg=cfg)
        updates.append(Update("oc", jit_update(noc, mesh), every=cfg.noc_every))
    return updates
