"""The AffinityNet training loss in JAX (method.md §9): affinities from boundaries along IRN paths.

aff(src, dst) = 1 − max over the path of σ(edge). Pair labels (bg_pos, fg_pos, neg) come from
the stride-4 affinity label map like `labels.pair_labels`, computed on device for the batch.
L = ½ [(½ mean_bgpos(−log(aff + ε)) + ½ mean_fgpos(−log(aff + ε))) + mean_neg(−log(1 + ε − aff))]
with masked means over the whole batch (sum / (count + ε)), as IRN does.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np

from pnoc_jax.affinity.paths import PathIndex

EPS = 1e-5


@dataclasses.dataclass(frozen=True)
class PairGeometry:
    """Constant index arrays of the IRN pairs of an h×w grid, directions in path-length groups.

    src (S,) and dst (D, S) flat indices with the D directions ordered group by group;
    groups: per path length L, (G, L, S) flat indices of the path points (row 0 = destination).
    """

    src: np.ndarray
    dst: np.ndarray
    groups: tuple[np.ndarray, ...]


@functools.lru_cache(maxsize=8)
def pair_geometry(h: int, w: int, radius: int) -> PairGeometry:
    index = PathIndex(radius)
    src, dst = index.pairs(h, w)
    grouped = index.grouped_path_indices(h, w)
    order = np.concatenate([ids for ids, _ in grouped])
    return PairGeometry(
        src=src.astype(np.int32),
        dst=dst[order].astype(np.int32),
        groups=tuple(idx.astype(np.int32) for _, idx in grouped),
    )


def path_affinity(edge_prob: jax.Array, geometry: PairGeometry) -> jax.Array:
    """[B, N] boundary probabilities -> [B, D, S] affinities (1 − max σ(edge) over each path)."""
    parts = [1.0 - jnp.max(edge_prob[:, idx], axis=2) for idx in geometry.groups]
    return jnp.concatenate(parts, axis=1)


def pair_masks(
    labels: jax.Array, geometry: PairGeometry, num_labels: int
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """[B, N] int label maps -> boolean (bg_pos, fg_pos, neg), each [B, D, S].

    A pair is valid when both labels are < num_labels (255 = ignore); pos when equal.
    """
    a = labels[:, geometry.src][:, None, :]
    b = labels[:, geometry.dst]
    valid = (a < num_labels) & (b < num_labels)
    pos = (a == b) & valid
    return pos & (a == 0), pos & (a > 0), (a != b) & valid


def _masked_mean(values: jax.Array, mask: jax.Array) -> jax.Array:
    mask = mask.astype(values.dtype)
    return jnp.sum(values * mask) / (jnp.sum(mask) + EPS)


def affinity_loss(
    edge_logits: jax.Array, labels: jax.Array, radius: int, num_labels: int
) -> dict[str, jax.Array]:
    """Loss terms for edge logits [B, h, w] and stride-4 label maps [B, h, w] (0 bg, 1..C, 255).

    Returns {"loss", "loss_bg_pos", "loss_fg_pos", "loss_neg"} (scalars).
    """
    b, h, w = edge_logits.shape
    geometry = pair_geometry(h, w, radius)
    aff = path_affinity(jax.nn.sigmoid(edge_logits).reshape(b, h * w), geometry)
    bg_pos, fg_pos, neg = pair_masks(
        labels.reshape(b, h * w).astype(jnp.int32), geometry, num_labels
    )
    pos_loss = -jnp.log(aff + EPS)
    neg_loss = -jnp.log(1.0 + EPS - aff)
    bg = _masked_mean(pos_loss, bg_pos)
    fg = _masked_mean(pos_loss, fg_pos)
    ng = _masked_mean(neg_loss, neg)
    loss = 0.5 * (0.5 * bg + 0.5 * fg + ng)
    return {"loss": loss, "loss_bg_pos": bg, "loss_fg_pos": fg, "loss_neg": ng}
