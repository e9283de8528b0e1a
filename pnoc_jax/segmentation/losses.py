"""Pixel-wise losses of the segmentation stage (method.md §10). Arrays are NHWC.

Shapes: logits [B, H, W, K]; labels [B, H, W] integer class ids in [0, K) or ``ignore_index``.
"""

import jax
import jax.numpy as jnp
import numpy as np

IGNORE_INDEX = 255


def cross_entropy(
    logits: jax.Array,
    labels: jax.Array,
    label_smoothing: float = 0.0,
    ignore_index: int = IGNORE_INDEX,
) -> jax.Array:
    """``F.cross_entropy(logits, labels, ignore_index=..., label_smoothing=ε)``, a float32 scalar.

    With V the non-ignored pixels and log p = log_softmax(logits) (in float32)::

        loss = (1/|V|) Σ_{i∈V} [ (1 − ε) · (−log p_i[y_i]) + (ε/K) · Σ_k (−log p_i[k]) ]

    which is PyTorch's mean reduction, smoothing term included. Difference: when every pixel is
    ignored PyTorch returns NaN (0/0) while this returns 0 with zero gradients, so a batch of
    unlabelled crops cannot poison the parameters.
    """
    logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    valid = labels != ignore_index
    safe = jnp.where(valid, labels, 0).astype(jnp.int32)
    nll = -jnp.take_along_axis(logp, safe[..., None], axis=-1)[..., 0]
    per_pixel = (1.0 - label_smoothing) * nll
    if label_smoothing:
        per_pixel = per_pixel - (label_smoothing / logp.shape[-1]) * jnp.sum(logp, axis=-1)
    total = jnp.sum(jnp.where(valid, per_pixel, 0.0))
    return total / jnp.maximum(jnp.sum(valid), 1).astype(jnp.float32)


def nearest_resize_labels(labels: jax.Array, size: tuple[int, int]) -> jax.Array:
    """Label maps ``[B, H, W]`` -> ``[B, h, w]`` by PIL's NEAREST rule (pixel centres).

    Output pixel ``i`` takes input ``⌊(i + 0.5) · H / h⌋`` along each axis, as
    ``Image.resize(size, Image.NEAREST)`` does; deeplab-pytorch resizes the labels of every MSC
    output this way.
    """
    height, width = labels.shape[1:3]

    def taps(n_in: int, n_out: int) -> np.ndarray:
        centres = (np.arange(n_out, dtype=np.float64) + 0.5) * (n_in / n_out)
        return np.minimum(np.floor(centres).astype(np.int32), n_in - 1)

    rows, cols = taps(height, size[0]), taps(width, size[1])
    return labels[:, rows][:, :, cols]


def msc_cross_entropy(
    outputs: tuple[jax.Array, ...], labels: jax.Array, label_smoothing: float = 0.0
) -> jax.Array:
    """DeepLabV2's MSC loss: the sum over its outputs (full, scaled..., fused) of the
    cross-entropy against the labels nearest-resized to each output's size."""
    return sum(
        cross_entropy(out, nearest_resize_labels(labels, out.shape[1:3]), label_smoothing)
        for out in outputs
    )
