"""Dense (per-pixel) predictions at the image's size: scales x flip on fixed canvases (§10).

For every scale s the images are resized (PIL bicubic, `tta.resize_image`), normalised and
padded bottom/right with 0 (the mean colour) onto the canvas of side
`tta.canvas_size(max_image_size, s)`, with, per input, a `valid` mask of its own pixels (the
network may use it, e.g. DeepLabV3+'s image pooling). The network's logits [N, S, S, K] at the
canvas size are cropped to the resized image, the flipped view's flipped back, and each is
resized bilinearly (half-pixel, `align_corners=False`) to the image's H x W. Per image:

    logits = mean over s of (l_s(x_s) + flip l_s(flip x_s))      (flip pair summed)

as the reference's `segmentation/inference.py` merges them; softmax and the CRF follow on the
host (`segmentation.tasks`).
"""

import math
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from pnoc_jax.data import transforms
from pnoc_jax.inference import tta
from pnoc_jax.inference.predictor import DeviceProgram

# (images [N, S, S, 3] float32, valid [N, S, S] bool) -> logits [N, S, S, K]
DensePredict = Callable[[tuple[np.ndarray, np.ndarray]], np.ndarray]
# (variables, (images, valid)) -> logits: the network's function a DensePredict jits
DenseFn = Callable[[Any, tuple[jax.Array, jax.Array]], jax.Array]


def on_canvas(
    images: Sequence[np.ndarray], canvas: int, batch_multiple: int, flip: bool
) -> tuple[np.ndarray, np.ndarray]:
    """Normalised views [x0, (flip x0), x1, ...] padded into canvas², and their valid masks.

    Zero views (valid nowhere) pad the batch to a multiple of `batch_multiple`.
    """
    views, masks = [], []
    for image in images:
        h, w = image.shape[:2]
        if max(h, w) > canvas:
            raise ValueError(f"an image of {h}x{w} does not fit the {canvas}² canvas")
        x = transforms.normalize(image)
        for view in (x, x[:, ::-1]) if flip else (x,):
            padded = np.zeros((canvas, canvas, 3), np.float32)
            padded[:h, :w] = view
            valid = np.zeros((canvas, canvas), bool)
            valid[:h, :w] = True
            views.append(padded)
            masks.append(valid)
    while len(views) < view_rows(len(images), batch_multiple, flip):
        views.append(np.zeros_like(views[0]))
        masks.append(np.zeros_like(masks[0]))
    return np.stack(views), np.stack(masks)


def view_rows(images: int, batch_multiple: int, flip: bool) -> int:
    """Rows of the batch `on_canvas` makes of `images` images: their views, padded to a
    multiple of `batch_multiple`."""
    return batch_multiple * math.ceil((2 if flip else 1) * images / batch_multiple)


def dense_programs(
    fn: DenseFn,
    variables: Any,
    scales: Sequence[float],
    max_image_size: int,
    images: int,
    batch_multiple: int,
    flip: bool,
) -> list[DeviceProgram]:
    """The batches `multiscale_logits` of `images` images predicts with `fn`, one per scale:
    the views and their valid masks on the scale's canvas, `view_rows` rows."""
    rows = view_rows(images, batch_multiple, flip)
    programs = []
    for scale in scales:
        canvas = tta.canvas_size(max_image_size, scale)
        batch = (
            jax.ShapeDtypeStruct((rows, canvas, canvas, 3), jnp.float32),
            jax.ShapeDtypeStruct((rows, canvas, canvas), jnp.bool_),
        )
        programs.append(DeviceProgram(f"scale {scale}", fn, variables, batch))
    return programs


def multiscale_logits(
    images: Sequence[np.ndarray],
    predict: DensePredict,
    scales: Sequence[float],
    max_image_size: int,
    batch_multiple: int,
    flip: bool = True,
) -> list[np.ndarray]:
    """Per image, float32 [K, H, W]: the mean over `scales` of its (flip-pair summed) logits,
    each resized to the image's size. Images must have sides <= `max_image_size`."""
    sums: list[np.ndarray | None] = [None] * len(images)
    views = 2 if flip else 1
    for scale in scales:
        canvas = tta.canvas_size(max_image_size, scale)
        resized = [tta.resize_image(image, scale) for image in images]
        out = predict(on_canvas(resized, canvas, batch_multiple, flip))
        for i, (image, small) in enumerate(zip(images, resized, strict=True)):
            h, w = small.shape[:2]
            logits = out[views * i, :h, :w]
            if flip:
                logits = logits + out[views * i + 1, :h, :w][:, ::-1]
            full = tta.resize_maps(np.ascontiguousarray(logits), *image.shape[:2])
            sums[i] = full if sums[i] is None else sums[i] + full
    return [(s / len(scales)).astype(np.float32) for s in sums]
