"""Pixel-wise losses of the segmentation stage (spec §10). Arrays are NHWC.

Shapes: logits [B, H, W, K]; labels [B, H, W] integer class ids in [0, K) or ``ignore_index``.
"""

import jax
import jax.numpy as jnp

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
