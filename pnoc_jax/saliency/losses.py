"""Pure loss terms of C²AM and C²AM-H (§7; reference ``core/ccam.py``, ``train_hints.py``).

Shapes: embeddings fg, bg [B, C] (the :class:`~pnoc_jax.models.ccam.CCAM` outputs); logits z
[B, h, w] (the disentangler's pre-sigmoid map); hints [B, h, w] at z's size. All losses are computed
in float32 and return a scalar.

The C²AM-H objective of the reference is ``hint_weight · hint_loss + sim_max_loss(fg) +
sim_min_loss(bg, fg) + sim_max_loss(bg)``.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp

from pnoc_jax.models.resize import resize_bicubic

SIM_MIN = 0.0005  # cosine similarities are clamped to [SIM_MIN, SIM_MAX] before the logs
SIM_MAX = 0.9995
_NORMALIZE_EPS = 1e-12  # torch F.normalize: x / max(‖x‖₂, eps)


def _normalize(x: jax.Array) -> jax.Array:
    """x / max(‖x‖, eps), as sqrt(max(‖x‖², eps²)) so a zero row has a zero (not NaN) gradient."""
    x = x.astype(jnp.float32)
    sq_norm = jnp.sum(x * x, axis=-1, keepdims=True)
    return x / jnp.sqrt(jnp.maximum(sq_norm, _NORMALIZE_EPS**2))


def cosine_similarity(a: jax.Array, b: jax.Array) -> jax.Array:
    """S_ij = clip(⟨a_i/‖a_i‖, b_j/‖b_j‖⟩, 0.0005, 0.9995): [B, C] × [B', C] -> [B, B'].

    Rows are L2-normalised like torch ``F.normalize`` (norm floored at 1e-12, so a zero row gives
    similarity 0, clamped to 0.0005). The product runs at full float32 precision.
    """
    sim = jnp.matmul(_normalize(a), _normalize(b).T, precision=jax.lax.Precision.HIGHEST)
    return jnp.clip(sim, SIM_MIN, SIM_MAX)


def descending_ranks(sim: jax.Array) -> jax.Array:
    """0-based rank of every entry within its row in descending order, ties by column index.

    rank_ij = #{k : S_ik > S_ij} + #{k < j : S_ik = S_ij}, computed as the reference does, as the
    argsort of the argsort of the row sorted in descending order. The reference uses
    ``torch.sort`` without ``stable``, whose tie order is unspecified (measured with torch 2.13 on
    CPU: index order for rows of up to 16 entries, arbitrary beyond); this is
    ``torch.sort(stable=True)``, identical whenever a row has no ties. Ties arise in practice from
    the clamp (every diagonal entry is 0.9995, and so is any pair with cosine ≥ 0.9995).
    """
    order = jnp.argsort(-sim, axis=-1, stable=True)
    return jnp.argsort(order, axis=-1, stable=True)


def sim_max_loss(embeddings: jax.Array, alpha: float) -> jax.Array:
    """C²AM's rank-weighted similarity-maximisation loss (SimMaxLoss), pulling rows together.

    S = cosine_similarity(x, x) [B, B] (clamped to [0.0005, 0.9995]); ℓ_ij = −log S_ij (≥ 0, so
    the reference's ``loss[loss < 0] = 0`` never acts); r_ij = descending_ranks(S)_ij − 1, so the
    self-pair, ranked first, gets r = −1 and weight e^α; w_ij = exp(−α · r_ij), a constant (no
    gradient through the ranks); loss = mean over all B² entries, diagonal included, of w · ℓ.
    """
    sim = cosine_similarity(embeddings, embeddings)
    rank = descending_ranks(jax.lax.stop_gradient(sim)) - 1
    weights = jnp.exp(-alpha * rank.astype(jnp.float32))
    return jnp.mean(weights * -jnp.log(sim))


def sim_min_loss(bg: jax.Array, fg: jax.Array) -> jax.Array:
    """C²AM's similarity-minimisation loss (SimMinLoss), pushing background from foreground.

    S_ij = cosine_similarity(bg, fg)_ij (clamped to [0.0005, 0.9995]);
    loss = mean over all B² pairs (i, j) of −log(1 − S_ij).
    """
    return jnp.mean(-jnp.log(1.0 - cosine_similarity(bg, fg)))


def bce_with_logits(logits: jax.Array, targets: jax.Array) -> jax.Array:
    """Elementwise torch ``BCEWithLogitsLoss``: −t·log σ(z) − (1 − t)·log σ(−z).

    Written as (1 − t)·z − log σ(z), stable for any z, with the exact gradient σ(z) − t also at
    z = 0 (the max(z, 0) − z·t + log(1 + e^{−|z|}) form has kinks there).
    """
    z = logits.astype(jnp.float32)
    return (1.0 - targets) * z - jax.nn.log_sigmoid(z)


def hint_loss(
    logits: jax.Array, hints: jax.Array, fg_threshold: float, label_smoothing: float
) -> jax.Array:
    """C²AM-H foreground-hint loss: BCE of z towards (smoothed) foreground where the hint is high.

    mask = hints ≥ fg_threshold (pixels of the whole batch); target = 1 − label_smoothing / 2
    (binary label smoothing of 1; 0.95 at 0.1); loss = Σ_mask BCEWithLogits(z, target) / |mask|.

    Deviation: with an empty mask the loss is 0 with zero gradient; the reference averages an
    empty selection (``ccams[fg_likely]`` then ``.mean()``), which is NaN.
    """
    mask = (hints >= fg_threshold).astype(jnp.float32)
    target = 1.0 - 0.5 * label_smoothing
    total = jnp.sum(mask * bce_with_logits(logits, target))
    return total / jnp.maximum(jnp.sum(mask), 1.0)


def resize_hints(hints: jax.Array, size: Sequence[int]) -> jax.Array:
    """Hint maps [B, H, W] at the image size -> [B, h, w] at the disentangler's size ``size``.

    Each hint map is the max over the image's classes of its P-NOC ``hr_cam``, transformed
    together with the image; the reference resizes it with PyTorch bicubic interpolation
    (``F.interpolate(mode="bicubic")``, no antialias), e.g. 448 → 28, which
    :func:`~pnoc_jax.models.resize.resize_bicubic` reproduces. Returns float32.
    """
    return resize_bicubic(hints.astype(jnp.float32), size)
