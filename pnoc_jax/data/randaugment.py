"""RandAugmentMC (FixMatch pool), host-side with PIL; method.md §2 item 4.

`RandAugmentMC(n=2, m=10)`: choose `n` ops with replacement from the pool below; each is applied
with probability 0.5 at magnitude ``v ~ U{1..m-1}`` (= U{1..9}), where

* float ops: ``value = v * max_v / 10 + bias``; int ops: ``value = int(v * max_v / 10) + bias``,
* geometric ops (Rotate, ShearX/Y, TranslateX/Y) get a random sign,

then ALWAYS a black 16x16 Cutout (`cutout_abs`: centre uniform over the image, box clipped at the
image border, as in FixMatch, so boxes at the border are smaller). Geometric ops move only the
image (classification: the mask is not transformed here). All randomness comes from the given
`np.random.Generator`.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from PIL import Image, ImageEnhance, ImageOps

CUTOUT_SIZE = 16


def _float_value(v: int, max_v: float) -> float:
    return float(v) * max_v / 10.0


def _int_value(v: int, max_v: float) -> int:
    return int(v * max_v / 10)


def _signed(value: float, rng: np.random.Generator) -> float:
    return -value if rng.random() < 0.5 else value


def auto_contrast(img, v, max_v, bias, rng):
    return ImageOps.autocontrast(img)


def brightness(img, v, max_v, bias, rng):
    return ImageEnhance.Brightness(img).enhance(_float_value(v, max_v) + bias)


def color(img, v, max_v, bias, rng):
    return ImageEnhance.Color(img).enhance(_float_value(v, max_v) + bias)


def contrast(img, v, max_v, bias, rng):
    return ImageEnhance.Contrast(img).enhance(_float_value(v, max_v) + bias)


def equalize(img, v, max_v, bias, rng):
    return ImageOps.equalize(img)


def identity(img, v, max_v, bias, rng):
    return img


def posterize(img, v, max_v, bias, rng):
    return ImageOps.posterize(img, _int_value(v, max_v) + bias)


def rotate(img, v, max_v, bias, rng):
    return img.rotate(_signed(_int_value(v, max_v), rng))


def sharpness(img, v, max_v, bias, rng):
    return ImageEnhance.Sharpness(img).enhance(_float_value(v, max_v) + bias)


def shear_x(img, v, max_v, bias, rng):
    s = _signed(_float_value(v, max_v), rng)
    return img.transform(img.size, Image.Transform.AFFINE, (1, s, 0, 0, 1, 0))


def shear_y(img, v, max_v, bias, rng):
    s = _signed(_float_value(v, max_v), rng)
    return img.transform(img.size, Image.Transform.AFFINE, (1, 0, 0, s, 1, 0))


def solarize(img, v, max_v, bias, rng):
    return ImageOps.solarize(img, 256 - (_int_value(v, max_v) + bias))


def translate_x(img, v, max_v, bias, rng):
    t = int(_signed(_float_value(v, max_v), rng) * img.size[0])
    return img.transform(img.size, Image.Transform.AFFINE, (1, 0, t, 0, 1, 0))


def translate_y(img, v, max_v, bias, rng):
    t = int(_signed(_float_value(v, max_v), rng) * img.size[1])
    return img.transform(img.size, Image.Transform.AFFINE, (1, 0, 0, 0, 1, t))


Op = Callable[..., Image.Image]

# (op, max_v, bias) -- the FixMatch "fixmatch_augment_pool".
FIXMATCH_POOL: tuple[tuple[Op, float | None, float | None], ...] = (
    (auto_contrast, None, None),
    (brightness, 0.9, 0.05),
    (color, 0.9, 0.05),
    (contrast, 0.9, 0.05),
    (equalize, None, None),
    (identity, None, None),
    (posterize, 4, 4),
    (rotate, 30, None),
    (sharpness, 0.9, 0.05),
    (shear_x, 0.3, None),
    (shear_y, 0.3, None),
    (solarize, 256, 0),
    (translate_x, 0.3, None),
    (translate_y, 0.3, None),
)


def cutout_box(
    height: int, width: int, size: int, rng: np.random.Generator
) -> tuple[int, int, int, int]:
    """FixMatch CutoutAbs box (y0, x0, y1, x1): centre ~ U(image), clipped to the image."""
    x0 = rng.uniform(0, width)
    y0 = rng.uniform(0, height)
    x0 = int(max(0, x0 - size / 2.0))
    y0 = int(max(0, y0 - size / 2.0))
    x1 = int(min(width, x0 + size))
    y1 = int(min(height, y0 + size))
    return y0, x0, y1, x1


def cutout_abs(image: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
    """Black out a `size` x `size` box (clipped at borders) of uint8[H, W, 3]; returns a copy."""
    y0, x0, y1, x1 = cutout_box(image.shape[0], image.shape[1], size, rng)
    out = image.copy()
    out[y0:y1, x0:x1] = 0
    return out


class RandAugmentMC:
    """RandAugment as in FixMatch: `n` random ops at random magnitude, then a black cutout."""

    def __init__(self, n: int = 2, m: int = 10, cutout: int = CUTOUT_SIZE):
        if not 1 <= m <= 10:
            raise ValueError(f"RandAugmentMC magnitude m must be in [1, 10], got {m}")
        self.n, self.m, self.cutout = n, m, cutout
        self.pool = FIXMATCH_POOL

    def apply_ops(self, image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """The random ops only (no cutout): uint8[H, W, 3] -> uint8[H, W, 3]."""
        img = Image.fromarray(np.ascontiguousarray(image, dtype=np.uint8))
        for k in rng.integers(len(self.pool), size=self.n):
            op, max_v, bias = self.pool[int(k)]
            v = int(rng.integers(1, self.m))
            if rng.random() < 0.5:
                img = op(img, v, max_v, bias, rng)
        return np.asarray(img.convert("RGB"), dtype=np.uint8)

    def __call__(self, image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """uint8[H, W, 3] RGB -> augmented uint8[H, W, 3] (same size), cutout included."""
        return cutout_abs(self.apply_ops(image, rng), self.cutout, rng)
