"""CAM training strategies: which loss terms each adds to the generator's loss (method.md §2–§5).

| term   | generator loss f gets                            | second network            |
|--------|--------------------------------------------------|---------------------------|
| cls    | ℓ(GAP(A), ỹ)                                     | -                         |
| puzzle | + ℓ(GAP(A_re), ỹ) + λ_re·|A − A_re|·y            | -                         |
| cse    | + λ_cse·ℓ(oc(x ⊙ (1 − ψ(A^r))), ỹ∖r)             | OC, frozen                |
| noc    | (cse's OC becomes noc, trained adversarially)    | noc, own update           |

`STRATEGIES` says which terms make each strategy; everything else is derived from it. P-NOC's
noc is updated by its own jitted function over its own optax state on the hard-masked image
x ∘ [ψ(A^r) <= δ_noc] against the full (smoothed) labels, weighted by λ_noc. With
`noc_cse_gradient` the noc update also receives ∇_noc of λ_cse·o from the generator's loss, as
the official code does (method.md §5.4); the generator update itself never changes noc.
"""

import dataclasses
import functools
from typing import Any

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import ml_collections
from jax.sharding import Mesh

from pnoc_jax import config_lib
from pnoc_jax.cam import losses
from pnoc_jax.core import rng
from pnoc_jax.core.loop import Update, jit_update
from pnoc_jax.core.train_state import TrainState

STRATEGIES: dict[str, frozenset[str]] = {
    "cam": frozenset({"cls"}),
    "puzzle": frozenset({"cls", "puzzle"}),
    "occse": frozenset({"cls", "cse"}),
    "poc": frozenset({"cls", "puzzle", "cse"}),
    "pnoc": frozenset({"cls", "puzzle", "cse", "noc"}),
}


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
    def terms(self) -> frozenset[str]:
        return STRATEGIES[self.name]


@flax.struct.dataclass
class NocInput:
    """What the generator update hands to the noc update of the same step.

    keep_mask: [B, H, W], 1 where noc sees the image (ψ(A^r) <= δ_noc), from the generator's
    CAMs before its update; cse_grads: ∇_noc of λ_cse·ℓ(noc(x̃), ỹ∖r), or None (paper text).
    """

    keep_mask: jax.Array
    cse_grads: Any = None


def needs_oc(name: str) -> bool:
    """Whether a strategy trains against an ordinary classifier."""
    return "cse" in STRATEGIES[name]


def reads_oc(section: ml_collections.ConfigDict) -> bool:
    """Whether a training config section reads a trained OC: as the OC or as f's backbone."""
    return needs_oc(section.strategy) or section.get("init_backbone_from") == "train_oc"


def strategy_config(section: ml_collections.ConfigDict, total_steps: int) -> StrategyConfig:
    """The StrategyConfig of a training section (strategy, label smoothing, strategy_args)."""
    return config_lib.from_section(
        StrategyConfig,
        section.strategy_args,
        name=section.strategy,
        total_steps=total_steps,
        label_smoothing=section.label_smoothing,
    )


def validate_args(config: ml_collections.ConfigDict, section: str) -> None:
    """Checks of `config.<section>.strategy` and its `strategy_args`."""
    config_lib.check_choice(config, f"{section}.strategy", tuple(STRATEGIES))
    known = {f.name for f in dataclasses.fields(StrategyConfig)} - {
        "name", "total_steps", "label_smoothing"
    }  # fmt: skip
    args = config[section].strategy_args
    unknown = sorted(set(args) - known)
    config_lib.check(
        not unknown, f"{section}.strategy_args", unknown, f"keys among {sorted(known)}"
    )
    key = f"{section}.strategy_args"
    for name in ("re_fraction", "cse_fraction", "noc_fraction"):
        config_lib.check_number(config, f"{key}.{name}", low=0, high=1, low_open=True)
    config_lib.check_number(config, f"{key}.noc_threshold", low=0, high=1)
    config_lib.check_number(config, f"{key}.noc_every", low=1, integer=True)
    for name in ("re_start", "re_end", "cse_start", "cse_end", "noc_start", "noc_end"):
        config_lib.check_number(config, f"{key}.{name}", low=0)


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
    loss, metrics, carry = cls, {"loss_cls": cls}, None

    if "puzzle" in cfg.terms:
        _, tile_cams, batch_stats = _forward(model, params, batch_stats, losses.tile(x), True)
        merged = losses.merge(tile_cams)
        p = losses.multilabel_soft_margin(jnp.mean(merged, axis=(1, 2)), targets)
        re = losses.reconstruction_loss(cams, merged, y)
        lambda_re = losses.linear_ramp(
            step, cfg.total_steps, cfg.re_start, cfg.re_end, cfg.re_fraction
        )
        loss = loss + p + lambda_re * re
        metrics.update(loss_p=p, loss_re=re, lambda_re=lambda_re)

    if "cse" in cfg.terms:
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
        if "noc" in cfg.terms:
            keep = losses.hard_keep_mask(jax.lax.stop_gradient(maps), cfg.noc_threshold)
            carry = NocInput(keep_mask=keep)

    metrics["loss"] = loss
    return loss, (metrics, batch_stats, carry)


def generator_update(
    state: TrainState,
    others: dict[str, TrainState],
    batch: dict,
    carry: None,
    step: jax.Array,
    *,
    model: nn.Module,
    oc_model: nn.Module | None,
    cfg: StrategyConfig,
    seed: int,
) -> tuple[TrainState, dict, NocInput | None]:
    """One generator (f) step; for P-NOC also returns the noc update's `NocInput`.

    Metrics: the loss terms, their λs, `lr` and `grad_norm` (of the gradients applied to f).
    """
    del carry
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
    with_noc_grad = "noc" in cfg.terms and cfg.noc_cse_gradient
    argnums = (0, 1) if with_noc_grad else 0
    grads, (metrics, batch_stats, noc_input) = jax.grad(loss_fn, argnums=argnums, has_aux=True)(
        state.params, oc_params
    )
    if with_noc_grad:
        grads, cse_grads = grads
        noc_input = noc_input.replace(cse_grads=cse_grads)
    state, stats = state.apply_gradients_with_stats(grads=grads, batch_stats=batch_stats)
    return state, {**metrics, **stats}, noc_input


def noc_update(
    state: TrainState,
    others: dict[str, TrainState],
    batch: dict,
    carry: NocInput,
    step: jax.Array,
    *,
    model: nn.Module,
    cfg: StrategyConfig,
) -> tuple[TrainState, dict, NocInput]:
    """One noc step on x ∘ keep_mask (hard erasing of the generator's class-r CAM).

    Metrics: `loss_noc`, `lambda_noc`, `noc_lr` and `noc_grad_norm` (of the gradients applied:
    the hard-mask loss's plus, with `noc_cse_gradient`, the generator's CSE gradient).
    """
    del others
    x, y = batch["image"], batch["labels"]
    masked = x * carry.keep_mask[..., None].astype(x.dtype)
    targets = losses.smooth_labels(y, cfg.label_smoothing)
    lambda_noc = losses.linear_ramp(
        step, cfg.total_steps, cfg.noc_start, cfg.noc_end, cfg.noc_fraction
    )

    def loss_fn(params):
        logits, _, _ = _forward(model, params, state.batch_stats, masked, train=False)
        loss = losses.multilabel_soft_margin(logits, targets)
        return lambda_noc * loss, loss

    grads, noc_loss = jax.grad(loss_fn, has_aux=True)(state.params)
    if carry.cse_grads is not None:
        grads = jax.tree.map(jnp.add, grads, carry.cse_grads)
    state, stats = state.apply_gradients_with_stats(grads=grads, prefix="noc_")
    return state, {"loss_noc": noc_loss, "lambda_noc": lambda_noc, **stats}, carry


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
    if "noc" in cfg.terms:
        noc = functools.partial(noc_update, model=oc_model, cfg=cfg)
        updates.append(Update("oc", jit_update(noc, mesh), every=cfg.noc_every))
    return updates
