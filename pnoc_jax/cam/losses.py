"""Pure loss terms and schedules of the CAM strategies (method.md §2–§5). Arrays are NHWC.

Shapes: logits [B, C]; labels [B, C] in [0, 1]; cams [B, h, w, C] raw (pre-ReLU) CAM logits.
"""

import jax
import jax.numpy as jnp


def smooth_labels(labels: jax.Array, alpha: float) -> jax.Array:
    """y <- (1 - alpha) y + alpha / 2 (binary label smoothing; alpha 0.1 gives 0.95 / 0.05)."""
    return labels * (1.0 - alpha) + 0.5 * alpha


def multilabel_soft_margin(logits: jax.Array, targets: jax.Array) -> jax.Array:
    """torch MultiLabelSoftMarginLoss: -(1/C) Σ_c [y log σ(z) + (1-y) log σ(-z)], batch mean."""
    logits = logits.astype(jnp.float32)
    per_class = targets * jax.nn.log_sigmoid(logits) + (1.0 - targets) * jax.nn.log_sigmoid(-logits)
    return -jnp.mean(per_class)


def linear_ramp(step: jax.Array, total_steps: int, start: float, end: float, fraction: float):
    """Reference `linear_schedule`: start -> end linearly over the first `fraction` of training.

    value = start + (end - start) * min(step / (fraction * total), 1), step 0-based.
    """
    progress = jnp.minimum(step / jnp.maximum(fraction * total_steps, 1e-8), 1.0)
    return start + (end - start) * progress


# --- Puzzle-CAM (§3) ---------------------------------------------------------------------


def tile(images: jax.Array) -> jax.Array:
    """[B, H, W, ...] -> [4B, H/2, W/2, ...]: each image's quadrants TL, TR, BL, BR in a row.

    Image-major (tile 4b + q is quadrant q of image b), so with the batch sharded over devices
    every image's tiles stay on its device: no communication. (The reference stacks them
    quadrant-major; the order is internal to the Puzzle module: `merge` inverts it, and the
    losses and the BatchNorm statistics over all 4B tiles do not depend on it.)
    """
    b, h, w = images.shape[:3]
    hh, hw = h // 2, w // 2
    rest = images.shape[3:]
    x = images[:, : 2 * hh, : 2 * hw].reshape(b, 2, hh, 2, hw, *rest)
    x = jnp.moveaxis(x, 3, 2)  # [B, 2 (rows), 2 (columns), hh, hw, ...]
    return x.reshape(4 * b, hh, hw, *rest)


def merge(tiles: jax.Array) -> jax.Array:
    """Inverse of `tile`: [4B, h, w, ...] -> [B, 2h, 2w, ...]."""
    n, h, w = tiles.shape[:3]
    rest = tiles.shape[3:]
    x = tiles.reshape(n // 4, 2, 2, h, w, *rest)
    x = jnp.moveaxis(x, 2, 3)  # [B, 2 (rows), h, 2 (columns), w, ...]
    return x.reshape(n // 4, 2 * h, 2 * w, *rest)


def reconstruction_loss(cams: jax.Array, merged_cams: jax.Array, labels: jax.Array) -> jax.Array:
    """mean over all B·h·w·C elements of |A - A_re| · y_c, with y the UNSMOOTHED labels."""
    diff = jnp.abs(cams.astype(jnp.float32) - merged_cams.astype(jnp.float32))
    return jnp.mean(diff * labels[:, None, None, :])


# --- OC-CSE / P-NOC erasing (method.md §4, §5) ----------------------------------------------------


def sample_erased_class(key: jax.Array, labels: jax.Array) -> jax.Array:
    """One class per sample, uniformly among its positives (labels > 0.5). [B, C] -> [B] int32.

    A sample without positives gets a class drawn uniformly over all C; the training stages
    never pass one (`data.pipeline.labelled_only` skips them, as the reference does).
    """
    logits = jnp.where(labels > 0.5, 0.0, -jnp.inf)
    logits = jnp.where(jnp.any(labels > 0.5, axis=-1, keepdims=True), logits, 0.0)
    return jax.random.categorical(key, logits, axis=-1).astype(jnp.int32)


def resize_bilinear(x: jax.Array, height: int, width: int) -> jax.Array:
    """PyTorch `interpolate(bilinear, align_corners=False)`: half-pixel, no antialiasing.

    x: [B, h, w] or [B, h, w, C].
    """
    shape = (x.shape[0], height, width, *x.shape[3:])
    return jax.image.resize(x, shape, method="linear", antialias=False)


def class_maps(cams: jax.Array, classes: jax.Array, height: int, width: int) -> jax.Array:
    """ReLU(A[b, :, :, r_b]) bilinearly upsampled to the image: [B, H, W]."""
    selected = jnp.take_along_axis(cams, classes[:, None, None, None], axis=-1)[..., 0]
    return resize_bilinear(jax.nn.relu(selected.astype(jnp.float32)), height, width)


def soft_erasing_mask(maps: jax.Array) -> jax.Array:
    """OC-CSE soft mask 1 - ψ with ψ = maps / (max over the WHOLE BATCH + 1e-5). [B,H,W].

    Gradients flow through the maps and the max, into the generator (no stop_gradient).
    """
    return 1.0 - maps / (jnp.max(maps) + 1e-5)


def hard_keep_mask(maps: jax.Array, threshold: float) -> jax.Array:
    """P-NOC hard mask: keep pixels with ψ <= threshold, ψ = maps / (per-sample max + 1e-5)."""
    psi = maps / (jnp.max(maps, axis=(1, 2), keepdims=True) + 1e-5)
    return (psi <= threshold).astype(maps.dtype)


def remove_class(labels: jax.Array, classes: jax.Array) -> jax.Array:
    """y ∖ {r}: zero the erased class in each sample's (unsmoothed) labels."""
    return labels * (1.0 - jax.nn.one_hot(classes, labels.shape[-1], dtype=labels.dtype))
