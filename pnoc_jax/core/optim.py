"""SGD with the poly schedule and the parameter groups of the reference code (method.md §2).

Groups, by parameter path:
  backbone_weight  backbone kernels and BN scales      lr x1   weight decay
  backbone_bias    backbone biases and BN offsets      lr x2   no weight decay
  head_weight      new layers' kernels (CAM head, ...)  lr x10  weight decay
  head_bias        new layers' biases                   lr x20  no weight decay
  frozen           parameters that must not move        (updates set to zero)
"""

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import optax

GROUPS = ("backbone_weight", "backbone_bias", "head_weight", "head_bias")


@dataclasses.dataclass(frozen=True)
class OptimizerConfig:
    lr: float
    total_steps: int  # optimizer steps (after gradient accumulation)
    weight_decay: float = 1e-4
    momentum: float = 0.0
    nesterov: bool = False
    poly_power: float = 0.9
    lr_mult: tuple[float, float, float, float] = (1.0, 2.0, 10.0, 20.0)  # in GROUPS order
    accumulate_steps: int = 1
    # How an optimizer step combines the `accumulate_steps` micro-batch gradients: "sum" (the
    # reference's CAM and C²AM-H scripts, which do not divide the loss) or "mean" (DeepLab's).
    accumulation: str = "mean"
    # Weight decay on every parameter, biases and norm offsets too (an optimizer built without
    # parameter groups, e.g. the reference's affinity network); default: weights only.
    decay_all: bool = False
    # Path fragments (joined with "/") whose parameters are frozen, e.g. "bn" for FixedBatchNorm.
    frozen: Sequence[str] = ()


def poly_schedule(lr: float, total_steps: int, power: float = 0.9) -> optax.Schedule:
    """lr * (1 - t/T)^power, the "poly" decay of the reference code."""
    return optax.polynomial_schedule(
        init_value=lr, end_value=0.0, power=power, transition_steps=max(total_steps, 1)
    )


def _path_str(path: tuple) -> str:
    return "/".join(str(getattr(k, "key", getattr(k, "name", k))) for k in path)


def param_group(path: str, frozen: Sequence[str] = ()) -> str:
    """Maps a parameter path like 'backbone/layer1_0/bn1/scale' to its group name."""
    parts = path.split("/")
    if any(fragment in part for fragment in frozen for part in parts):
        return "frozen"
    is_weight = parts[-1] in ("kernel", "scale", "embedding")
    prefix = "backbone" if parts[0] == "backbone" else "head"
    return f"{prefix}_{'weight' if is_weight else 'bias'}"


def param_labels(params, frozen: Sequence[str] = ()):
    """A pytree like `params` holding each leaf's group name."""
    return jax.tree_util.tree_map_with_path(
        lambda path, _: param_group(_path_str(path), frozen), params
    )


@dataclasses.dataclass(frozen=True)
class StepStats:
    """What an update logs about the optimizer step it makes: `lr` and `grad_norm`.

    `lr` is the base (x1 multiplier) learning rate of the optimizer step a train-state step
    belongs to: `schedule(step // accumulate_steps)`, since with gradient accumulation
    `accumulate_steps` micro-batch steps make one optimizer step. `grad_norm` is the global
    norm of the gradients the update hands the optimizer (with accumulation, one micro-batch's),
    without the frozen parameters' (never applied).
    """

    schedule: optax.Schedule  # base learning rate of an optimizer step
    accumulate_steps: int = 1
    frozen: tuple[str, ...] = ()

    def lr(self, step: jax.Array) -> jax.Array:
        """The base learning rate applied to the gradients of train-state step `step`."""
        return jnp.asarray(self.schedule(step // self.accumulate_steps), jnp.float32)

    def grad_norm(self, grads: Any) -> jax.Array:
        """The global L2 norm of `grads` (`optax.tree.norm`, formerly `optax.global_norm`) over
        the parameters the optimizer moves."""
        labels = jax.tree.leaves(param_labels(grads, self.frozen))
        grads = jax.tree.leaves(grads)
        return optax.tree.norm(
            [g for g, label in zip(grads, labels, strict=True) if label != "frozen"]
        )


def make_optimizer(cfg: OptimizerConfig) -> tuple[optax.GradientTransformation, StepStats]:
    """Returns (transformation, its StepStats, whose `schedule` is the base schedule of the
    optimizer steps). Weight decay is added to the gradient (torch SGD), once per optimizer step.

    With `accumulate_steps` = k > 1 an optimizer step takes the SUM (`accumulation="sum"`) or
    the MEAN ("mean") of the k micro-batch gradients (optax.MultiSteps), then adds the decay:
    w <- w - lr·mult·(Σ_i g_i + wd·w) ("sum", the reference's CAM scripts: the loss is not
    divided, method.md §2 "Batch & gradient accumulation") or w <- w - lr·mult·(Σ_i g_i / k + wd·w)
    ("mean", the reference's DeepLab, which divides the loss). Emulating "sum" by "mean" at k
    times the learning rate would also multiply the decay by k.
    """
    if cfg.accumulation not in ("sum", "mean"):
        raise ValueError(f"accumulation must be 'sum' or 'mean', got {cfg.accumulation!r}")
    schedule = poly_schedule(cfg.lr, cfg.total_steps, cfg.poly_power)

    def group(mult: float, decay: bool) -> optax.GradientTransformation:
        scaled: Callable = lambda step: mult * schedule(step)
        parts = []
        if decay and cfg.weight_decay:
            parts.append(optax.add_decayed_weights(cfg.weight_decay))
        parts.append(optax.sgd(scaled, momentum=cfg.momentum or None, nesterov=cfg.nesterov))
        return optax.chain(*parts)

    transforms = {
        name: group(mult, decay=cfg.decay_all or name.endswith("weight"))
        for name, mult in zip(GROUPS, cfg.lr_mult, strict=True)
    }
    transforms["frozen"] = optax.set_to_zero()
    tx = optax.multi_transform(transforms, lambda params: param_labels(params, cfg.frozen))
    if cfg.accumulate_steps > 1:
        tx = optax.MultiSteps(
            tx, every_k_schedule=cfg.accumulate_steps, use_grad_mean=cfg.accumulation == "mean"
        )
    return tx, StepStats(schedule, cfg.accumulate_steps, tuple(cfg.frozen))
