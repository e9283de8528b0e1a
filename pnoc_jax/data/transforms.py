"""Host-side (NumPy / PIL) augmentations for classification training, method.md §2 "Input pipeline".

All functions are pure given an `np.random.Generator`. Images are HWC; uint8 RGB until
`normalize`, float32 afterwards. Masks are uint8[H, W] (0 bg, 1..C, 255 ignore) and follow the
geometric transforms (resize: nearest, flip, crop/pad with 255); photometric ops leave them alone.

Classification order (`make_classification_transform`): random resize of the long side, random
horizontal flip, optional colour jitter, optional RandAugment, ImageNet normalisation, random
crop / pad to ``image_size`` x ``image_size``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import ml_collections
import numpy as np
from PIL import Image, ImageEnhance

from pnoc_jax import config_lib
from pnoc_jax.core.masks import IGNORE
from pnoc_jax.data.randaugment import RandAugmentMC

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32)
AUGMENTATIONS = ("colorjitter", "randaugment")


def random_resize_long_side(
    image: np.ndarray,
    mask: np.ndarray | None,
    rng: np.random.Generator,
    min_size: int,
    max_size: int,
) -> tuple[np.ndarray, np.ndarray | None]:
    """Rescale so the longer side is L ~ U{min_size..max_size} (inclusive).

    Image: PIL bicubic (uint8[H, W, 3]); mask: nearest (uint8[H, W]). Returns (image, mask).
    """
    target = int(rng.integers(min_size, max_size + 1))
    h, w = image.shape[:2]
    scale = target / max(h, w)
    new_w = max(1, round(w * scale))
    new_h = max(1, round(h * scale))
    if (new_h, new_w) == (h, w):
        return image, mask
    out = np.asarray(Image.fromarray(image).resize((new_w, new_h), Image.Resampling.BICUBIC))
    if mask is not None:
        mask = np.asarray(Image.fromarray(mask).resize((new_w, new_h), Image.Resampling.NEAREST))
    return out, mask


def random_hflip(
    image: np.ndarray, mask: np.ndarray | None, rng: np.random.Generator, p: float = 0.5
) -> tuple[np.ndarray, np.ndarray | None]:
    """Flip image (and mask) left-right together with probability `p`."""
    if rng.random() < p:
        image = np.ascontiguousarray(image[:, ::-1])
        if mask is not None:
            mask = np.ascontiguousarray(mask[:, ::-1])
    return image, mask


def _adjust_hue(img: Image.Image, hue: float) -> Image.Image:
    """torchvision PIL hue shift: rotate the HSV hue channel (uint8, wrapping) by hue * 255."""
    h, s, v = img.convert("HSV").split()
    h_arr = np.asarray(h, dtype=np.uint8)
    h_arr = (h_arr.astype(np.int16) + int(hue * 255)) % 256  # int(): truncation, as torchvision
    h = Image.fromarray(h_arr.astype(np.uint8), "L")
    return Image.merge("HSV", (h, s, v)).convert("RGB")


def color_jitter(
    image: np.ndarray,
    rng: np.random.Generator,
    brightness: float = 0.3,
    contrast: float = 0.3,
    saturation: float = 0.3,
    hue: float = 0.1,
) -> np.ndarray:
    """torchvision `ColorJitter` on uint8[H, W, 3]: random order of the 4 ops.

    Factors: brightness/contrast/saturation ~ U[max(0, 1 - x), 1 + x], hue ~ U[-hue, hue].
    """
    order = rng.permutation(4)
    b = rng.uniform(max(0.0, 1 - brightness), 1 + brightness) if brightness > 0 else None
    c = rng.uniform(max(0.0, 1 - contrast), 1 + contrast) if contrast > 0 else None
    s = rng.uniform(max(0.0, 1 - saturation), 1 + saturation) if saturation > 0 else None
    h = rng.uniform(-hue, hue) if hue > 0 else None
    img = Image.fromarray(np.ascontiguousarray(image, dtype=np.uint8))
    for op in order:
        if op == 0 and b is not None:
            img = ImageEnhance.Brightness(img).enhance(b)
        elif op == 1 and c is not None:
            img = ImageEnhance.Contrast(img).enhance(c)
        elif op == 2 and s is not None:
            img = ImageEnhance.Color(img).enhance(s)
        elif op == 3 and h is not None:
            img = _adjust_hue(img, h)
    return np.asarray(img, dtype=np.uint8)


def normalize(image: np.ndarray) -> np.ndarray:
    """uint8 RGB [H, W, 3] -> float32 ((x / 255) - mean) / std with ImageNet statistics."""
    return ((image.astype(np.float32) / 255.0 - IMAGENET_MEAN) / IMAGENET_STD).astype(np.float32)


def _crop_or_pad_offsets(length: int, size: int, rng: np.random.Generator) -> tuple[int, int]:
    """(source start, canvas start) along one axis."""
    space = length - size
    if space > 0:
        return int(rng.integers(space + 1)), 0
    return 0, int(rng.integers(-space + 1))


def random_crop_or_pad(
    image: np.ndarray,
    mask: np.ndarray | None,
    rng: np.random.Generator,
    size: int,
    image_fill: float = 0.0,
    mask_fill: int = IGNORE,
) -> tuple[np.ndarray, np.ndarray | None]:
    """Random `size` x `size` window: crop an axis that is longer, pad one that is shorter.

    Per axis: if longer, a random crop; if shorter, paste at a random offset into a canvas of
    `image_fill` (0 = mean colour after `normalize`) and `mask_fill` (255 = ignore).
    Image [H, W, C] of any dtype (kept), mask uint8[H, W]. Returns (image, mask).
    """
    h, w = image.shape[:2]
    src_y, dst_y = _crop_or_pad_offsets(h, size, rng)
    src_x, dst_x = _crop_or_pad_offsets(w, size, rng)
    ch, cw = min(h, size), min(w, size)
    canvas = np.full((size, size, *image.shape[2:]), image_fill, dtype=image.dtype)
    canvas[dst_y : dst_y + ch, dst_x : dst_x + cw] = image[src_y : src_y + ch, src_x : src_x + cw]
    if mask is not None:
        out_mask = np.full((size, size), mask_fill, dtype=mask.dtype)
        out_mask[dst_y : dst_y + ch, dst_x : dst_x + cw] = mask[
            src_y : src_y + ch, src_x : src_x + cw
        ]
        mask = out_mask
    return canvas, mask


def parse_augment(augment: str) -> tuple[str, ...]:
    """'colorjitter,randaugment' -> ('colorjitter', 'randaugment'); '' / 'none' -> ()."""
    names = [a.strip().lower() for a in (augment or "").split(",")]
    names = [a for a in names if a and a != "none"]
    for name in names:
        if name not in AUGMENTATIONS:
            raise ValueError(
                f"Unknown augmentation {name!r} in {augment!r}; "
                f"expected a comma-separated subset of {AUGMENTATIONS} or 'none'."
            )
    return tuple(dict.fromkeys(names))


@dataclasses.dataclass(frozen=True)
class ClassificationTransform:
    """Picklable callable ``(example, rng) -> {"image", "labels", "mask"}``.

    Output: image float32[S, S, 3] normalised (padding 0), labels float32[C],
    mask uint8[S, S] (transformed like the image, padding 255; all 255 if the example has none).
    """

    image_size: int
    min_size: int
    max_size: int
    augment: tuple[str, ...]

    def __call__(self, example: dict[str, Any], rng: np.random.Generator) -> dict[str, np.ndarray]:
        image = np.asarray(example["image"], dtype=np.uint8)
        mask = example.get("mask")
        if mask is None:
            mask = np.full(image.shape[:2], IGNORE, np.uint8)
        mask = np.asarray(mask, dtype=np.uint8)
        if mask.ndim == 3:
            mask = mask[..., 0]
        image, mask = random_resize_long_side(image, mask, rng, self.min_size, self.max_size)
        image, mask = random_hflip(image, mask, rng)
        if "colorjitter" in self.augment:
            image = color_jitter(image, rng)
        if "randaugment" in self.augment:
            image = RandAugmentMC(n=2, m=10)(image, rng)
        image, mask = random_crop_or_pad(normalize(image), mask, rng, self.image_size)
        return {
            "image": image,
            "labels": np.asarray(example["labels"], dtype=np.float32).copy(),
            "mask": mask,
        }


def check_augment(config: ml_collections.ConfigDict, key: str) -> None:
    """ConfigError naming `config.<key>` unless it is a valid `augment` set (`parse_augment`)."""
    value = config_lib.get(config, key)
    try:
        parse_augment(value)
    except ValueError as e:
        raise config_lib.ConfigError(f"config.{key}={value!r}: {e}") from None


def make_classification_transform(
    image_size: int, min_size: int, max_size: int, augment: str
) -> Callable[[dict, np.random.Generator], dict]:
    """Build the classification transform (§2 steps 1-6); `augment` as in `parse_augment`."""
    if not 0 < min_size <= max_size:
        raise ValueError(f"Need 0 < min_size <= max_size, got {min_size}, {max_size}.")
    return ClassificationTransform(image_size, min_size, max_size, parse_augment(augment))


def nearest_downsample(mask: np.ndarray, factor: int) -> np.ndarray:
    """uint8[H, W] -> uint8[round(H/f), round(W/f)] with PIL nearest (pixel centres, as IRN)."""
    h, w = mask.shape
    size = (max(1, round(w / factor)), max(1, round(h / factor)))
    return np.asarray(Image.fromarray(mask).resize(size, Image.Resampling.NEAREST))


@dataclasses.dataclass(frozen=True)
class AffinityTransform:
    """Picklable ``(example, rng) -> {"image", "aff_label"}`` for AffinityNet training (§9).

    The example's ``aff_label`` (uint8[H, W]: 0 bg, 1..C, 255 uncertain) follows the image
    through the classification geometry (random long-side resize, flip, normalise, crop/pad with
    0 / 255), then is nearest-downsampled to the stride-4 edge grid. Output: image
    float32[S, S, 3], aff_label uint8[S/4, S/4].
    """

    crop_size: int
    min_size: int
    max_size: int

    def __call__(self, example: dict[str, Any], rng: np.random.Generator) -> dict[str, np.ndarray]:
        base = ClassificationTransform(self.crop_size, self.min_size, self.max_size, ())
        out = base({**example, "mask": example["aff_label"]}, rng)
        return {"image": out["image"], "aff_label": nearest_downsample(out["mask"], 4)}


def make_affinity_transform(
    crop_size: int, min_size: int, max_size: int
) -> Callable[[dict, np.random.Generator], dict]:
    """Build the AffinityNet transform; `crop_size` must be a multiple of 4."""
    if crop_size <= 0 or crop_size % 4:
        raise ValueError(f"crop_size={crop_size}: expected a positive multiple of 4")
    if not 0 < min_size <= max_size:
        raise ValueError(f"Need 0 < min_size <= max_size, got {min_size}, {max_size}.")
    return AffinityTransform(crop_size, min_size, max_size)


# ---------------------------------------------------------------------------- saliency


@dataclasses.dataclass(frozen=True)
class SaliencyTransform:
    """Picklable ``(example, rng) -> {"image", "hint"}`` for C²AM / C²AM-H training (method.md §7).

    The image and its hint map (float [H, W]; zeros when the example has none) are resized to a
    `resize_size` square (PIL bilinear, both), flipped together, the image normalised, and a
    random `crop_size` window taken (padding 0 for both where the square is smaller). Output:
    image float32[S, S, 3], hint float32[S, S].
    """

    resize_size: int
    crop_size: int

    def __call__(self, example: dict[str, Any], rng: np.random.Generator) -> dict[str, np.ndarray]:
        image = np.asarray(example["image"], dtype=np.uint8)
        hint = example.get("hint")
        if hint is None:
            hint = np.zeros(image.shape[:2], np.float32)
        size = (self.resize_size, self.resize_size)
        image = np.asarray(Image.fromarray(image).resize(size, Image.Resampling.BILINEAR))
        hint = np.asarray(
            Image.fromarray(np.asarray(hint, np.float32)).resize(size, Image.Resampling.BILINEAR)
        )
        image, hint = random_hflip(image, hint, rng)
        image, hint = random_crop_or_pad(
            normalize(image), hint, rng, self.crop_size, image_fill=0.0, mask_fill=0.0
        )
        return {"image": image, "hint": np.ascontiguousarray(hint, np.float32)}


def scale_image(image: np.ndarray, scale: float) -> np.ndarray:
    """PIL bicubic resize of uint8[H, W, 3] to (round(W·s), round(H·s)); unchanged at s = 1."""
    if scale == 1.0:
        return image
    h, w = image.shape[:2]
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    return np.asarray(Image.fromarray(image).resize(size, Image.Resampling.BICUBIC))


def scale_map(values: np.ndarray, height: int, width: int) -> np.ndarray:
    """PIL bilinear resize of a float [h, w] map to [height, width] (unchanged if equal)."""
    values = np.asarray(values, np.float32)
    if values.shape == (height, width):
        return values
    return np.asarray(
        Image.fromarray(values).resize((width, height), Image.Resampling.BILINEAR), np.float32
    )


@dataclasses.dataclass(frozen=True)
class DetectorTransform:
    """Picklable ``(example, rng) -> {"image", "target", "valid"}`` for the saliency detector.

    PoolNet is trained at the images' own resolution (times `input_scale`), with a random
    horizontal flip and no other augmentation (method.md §7). To batch images of different sizes,
    each is normalised and pasted at the top-left of a `canvas` square (padding 0, the mean
    colour); `valid` marks the image's pixels, where the loss counts. The target (saliency in
    [0, 1], float [H, W]) follows the image (bilinear when scaled). Output: image
    float32[C, C, 3], target float32[C, C], valid float32[C, C].
    """

    canvas: int
    input_scale: float = 1.0

    def __call__(self, example: dict[str, Any], rng: np.random.Generator) -> dict[str, np.ndarray]:
        image = scale_image(np.asarray(example["image"], dtype=np.uint8), self.input_scale)
        h, w = image.shape[:2]
        if max(h, w) > self.canvas:
            raise ValueError(
                f"image {example.get('id', '?')} is {h}x{w} after scaling by {self.input_scale}, "
                f"larger than the detector's canvas ({self.canvas})"
            )
        target = scale_map(example["saliency"], h, w)
        image, target = random_hflip(image, target, rng)
        out_image = np.zeros((self.canvas, self.canvas, 3), np.float32)
        out_image[:h, :w] = normalize(image)
        out_target = np.zeros((self.canvas, self.canvas), np.float32)
        out_target[:h, :w] = target
        valid = np.zeros((self.canvas, self.canvas), np.float32)
        valid[:h, :w] = 1.0
        return {"image": out_image, "target": out_target, "valid": valid}
