"""Test-time augmentation on fixed square canvases: scales x horizontal flip (method.md §6).

Each image and its mirror image are normalised and padded bottom/right with 0 (the mean colour
after normalisation) onto a canvas that fits any image of the split at that scale, so the
network compiles once per scale. Outputs are cropped back to the image's own grid.
"""

import math
from collections.abc import Sequence
from typing import Any

import cv2
import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image

from pnoc_jax.core.errors import UserError
from pnoc_jax.data import transforms
from pnoc_jax.inference.predictor import DeviceProgram, Predict


def check_fits(examples: Sequence[dict], max_image_size: int, key: str) -> None:
    """UserError naming the images larger than `max_image_size` (the canvas), `key` the config
    key to raise: a fixed canvas holds any image up to that side."""
    too_big = [
        f"{e['id']} ({e['image'].shape[0]}x{e['image'].shape[1]})"
        for e in examples
        if max(e["image"].shape[:2]) > max_image_size
    ]
    if too_big:
        raise UserError(
            f"images {', '.join(too_big[:5])}{' ...' if len(too_big) > 5 else ''} are larger "
            f"than config.{key}={max_image_size}; raise it"
        )


def canvas_size(max_image_size: int, scale: float, multiple: int = 32) -> int:
    """Side of the square canvas that holds any image of side <= max_image_size at `scale`."""
    return multiple * math.ceil(round(max_image_size * scale) / multiple)


def resize_image(image: np.ndarray, scale: float) -> np.ndarray:
    """PIL bicubic resize to (round(W·s), round(H·s)), as the reference inference does."""
    if scale == 1.0:
        return image
    h, w = image.shape[:2]
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    return np.asarray(Image.fromarray(image).resize(size, Image.BICUBIC))


def resize_maps(maps: np.ndarray, height: int, width: int) -> np.ndarray:
    """Bilinear, align_corners=False (cv2 INTER_LINEAR) resize of [h, w, K] maps -> [K, H, W]."""
    out = np.stack(
        [
            cv2.resize(maps[..., k], (width, height), interpolation=cv2.INTER_LINEAR)
            for k in range(maps.shape[-1])
        ]
    )
    return out.astype(np.float32)


def flip_pairs_on_canvas(images: list[np.ndarray], canvas: int, batch_multiple: int) -> np.ndarray:
    """[x0, flip x0, x1, flip x1, ...] normalised, padded bottom/right into canvas² (mean colour).

    Zero images pad the batch to a multiple of `batch_multiple` (the local device count).
    """
    pairs = []
    for image in images:
        x = transforms.normalize(image)
        for view in (x, x[:, ::-1]):
            padded = np.zeros((canvas, canvas, 3), np.float32)
            padded[: view.shape[0], : view.shape[1]] = view
            pairs.append(padded)
    while len(pairs) < flip_pairs_rows(len(images), batch_multiple):
        pairs.append(np.zeros_like(pairs[0]))
    return np.stack(pairs)


def flip_pairs_rows(images: int, batch_multiple: int) -> int:
    """Rows of the batch `flip_pairs_on_canvas` makes of `images` images: both views of each,
    padded to a multiple of `batch_multiple`."""
    return batch_multiple * math.ceil(2 * images / batch_multiple)


def flip_pair_programs(
    fn: Any,
    variables: Any,
    scales: Sequence[float],
    max_image_size: int,
    images: int,
    batch_multiple: int,
) -> list[DeviceProgram]:
    """The batches `multiscale_flip_sums` of `images` images predicts with `fn`, one per scale:
    the images and their flips on the scale's canvas, `flip_pairs_rows` rows."""
    rows = flip_pairs_rows(images, batch_multiple)
    programs = []
    for scale in scales:
        canvas = canvas_size(max_image_size, scale)
        batch = jax.ShapeDtypeStruct((rows, canvas, canvas, 3), jnp.float32)
        programs.append(DeviceProgram(f"scale {scale}", fn, variables, batch))
    return programs


def flip_pair_outputs(
    images: list[np.ndarray], predict: Predict, canvas: int, batch_multiple: int, stride: int
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per image, the outputs on x and on flip(x), the latter flipped back, both cropped to the
    image's ⌈H/stride⌉ x ⌈W/stride⌉ grid. `predict` maps [N, canvas, canvas, 3] to [N, h, w, …].
    """
    out = predict(flip_pairs_on_canvas(images, canvas, batch_multiple))
    pairs = []
    for i, image in enumerate(images):
        h, w = math.ceil(image.shape[0] / stride), math.ceil(image.shape[1] / stride)
        pairs.append((out[2 * i, :h, :w], out[2 * i + 1, :h, :w][:, ::-1]))
    return pairs


def multiscale_flip_sums(
    images: list[np.ndarray],
    predict: Predict,
    scales: Sequence[float],
    max_image_size: int,
    stride: int,
    batch_multiple: int,
) -> list[list[np.ndarray]]:
    """For each image, per scale, output(x_s) + unflipped output(flip x_s) on its own grid."""
    per_image: list[list[np.ndarray]] = [[] for _ in images]
    for scale in scales:
        canvas = canvas_size(max_image_size, scale)
        resized = [resize_image(image, scale) for image in images]
        pairs = flip_pair_outputs(resized, predict, canvas, batch_multiple, stride)
        for maps, (direct, flipped) in zip(per_image, pairs, strict=True):
            maps.append(direct + flipped)
    return per_image
