"""`pnoc_synthetic`: a small, deterministic WSSS dataset embedded in the package (TF-free TFDS).

Why. CI, notebooks and the tiny configs need a dataset that builds in seconds on 2 CPU cores and
still has the structure that makes weakly supervised segmentation hard, so that CAM, OC-CSE and
P-NOC behave on it qualitatively as on VOC: a classifier can get the image labels right while its
CAMs cover only the most discriminative part of each object.

Design (all randomness from ``np.random.default_rng([SEED, split_index, image_index])``, so every
image is reproducible on its own and the build is bit-identical across runs and machines):

* Splits ``train`` (1000 images) and ``val`` (200 images); height and width each drawn uniformly
  in [80, 112] px, so images differ in size and aspect ratio.
* ``NUM_CLASSES = 6`` foreground classes (``CLASS_NAMES``); segmentation index ``c + 1``.
* Each object = a BODY plus a PART ("head"):

  - BODY: a rotated ellipse (aspect 0.45-0.8) with a wobbly outline (low-frequency radial
    sinusoid). Shape family and texture are SHARED by all classes: a random base colour
    (uniform 60-180 per channel), sinusoidal stripes at a random angle (contrast 25-45) and
    Gaussian noise. It is class-specific, but less distinctively than the part: the stripe
    period is drawn around a class value (3.5, 4.6, ... 9.0 px, +-3 %) and a class tint
    (|tint| up to 70/255 per channel) is added to the random base colour, so the body's class
    must be read from a texture frequency and a colour cast on a random colour.
  - PART: a small patch attached at one end of the body's major axis, 10-20 % of the object's
    area, strongly class-specific: its own saturated colour AND shape/pattern (red disc, green
    checkered square, blue triangle, yellow ring, magenta diamond, cyan cross).

  The labels can be predicted from the parts alone, so plain CAM peaks on the parts and
  under-covers the bodies; once a part is erased, the body still carries real class evidence
  that an erasing strategy can exploit (the premise of OC-CSE and P-NOC on VOC).
* 1-3 objects per image (p = 0.50 / 0.35 / 0.15). Object extent (body length plus part) is
  45 %-100 % of the shorter image side, so objects fill a large part of the image as on VOC
  (about 20 % of the pixels are foreground). Objects may overlap; a later object occludes
  earlier ones. Layouts are re-drawn until every object keeps >= 40 % of its body area and
  >= 50 % of its part visible (a heavily occluded object without a visible part would be
  label noise).
* Class co-occurrence: classes (0, 1) and (2, 3) are "partners" (like person + horse on VOC):
  each object after the first copies a partner of an earlier object with probability 0.6 when
  one exists; otherwise its class is uniform. Classes 4 and 5 have no partner.
* Clutter: a random linear gradient between two desaturated colours plus noise, then 2-6
  distractors drawn under the objects: small blobs in the shared body texture (no part, random
  stripe period, no class tint), bundles of random thin stripes, and desaturated rectangles.
  No distractor uses a part colour/shape, and none is labelled.
* Ground truth: pixel-exact masks (objects are rendered with hard edges, no anti-aliasing):
  0 background, ``c + 1`` for body and part alike. A VOC-like ignore band of 255, 2 px wide
  (one pixel on each side), is drawn on every object border, including borders between two
  touching objects (also of the same class). Only the masks are stored: which pixels are the
  part and which the body is not recorded anywhere.
* Labels: the multi-hot of the classes present in the final mask; every image has >= 1 label.

Features: ``id`` (Text, e.g. ``train_000042``), ``image`` (RGB PNG bytes), ``mask`` (single-channel
index PNG bytes, mode 'L', shape (H, W, 1)), ``labels`` (float32[6] multi-hot). Images are encoded
with OpenCV here (TFDS would need TensorFlow to encode NumPy arrays).
"""

from __future__ import annotations

from typing import ClassVar

import cv2
import numpy as np
import tensorflow_datasets as tfds

from pnoc_jax.core import fileio
from pnoc_jax.core.masks import IGNORE
from pnoc_jax.data.builders.common import SegmentationBuilder

SEED = 20230521
NUM_CLASSES = 6
CLASS_NAMES = ("ant", "bee", "cat", "dog", "eel", "fox")
SPLIT_SIZES = {"train": 1000, "val": 200}
SPLIT_INDEX = {"train": 0, "val": 1}
MIN_SIDE, MAX_SIDE = 80, 112

# Body cues, less distinctive than the parts: stripe period (px, +-PERIOD_JITTER) and an RGB
# tint added to a random base colour, per class.
_BODY_PERIOD = np.array([3.5, 4.6, 5.7, 6.8, 7.9, 9.0])
PERIOD_JITTER = 0.03
_BODY_TINT = np.array(
    [[70, 0, -30], [-30, 70, 0], [0, -30, 70], [50, 50, -50], [-50, 50, 50], [50, -50, 50]],
    dtype=np.float32,
)
EXTENT = (0.45, 1.0)  # object extent (body length + part) as a fraction of the shorter side
OBJECT_COUNT_P = (0.50, 0.35, 0.15)  # P(1, 2, 3 objects)
# Strong part cues: colour (RGB) per class; the shape is chosen in `_part_mask`.
_PART_COLOUR = np.array(
    [[225, 30, 30], [30, 200, 45], [40, 60, 235], [240, 220, 30], [220, 40, 220], [30, 220, 225]],
    dtype=np.float32,
)
_PARTNER = {0: 1, 1: 0, 2: 3, 3: 2}
# The class groups of the class analysis (method.md §15), from what makes the classes differ:
# co-occurrence (partnered classes share images, the others rarely do) and body texture (the
# stripe period of `_BODY_PERIOD`: fine 3.5-5.7 px, coarse 6.8-9.0 px).
CLASS_GROUPS = {
    "partnered": ["ant", "bee", "cat", "dog"],
    "unpartnered": ["eel", "fox"],
    "fine stripes": ["ant", "bee", "cat"],
    "coarse stripes": ["dog", "eel", "fox"],
}


# ------------------------------------------------------------------------------------ geometry
def _grid(h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates, float32 [H, W] each."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    return yy, xx


def _body_mask(yy, xx, obj: dict) -> np.ndarray:
    """Rotated ellipse with a wobbly outline; bool [H, W]."""
    dx, dy = xx - obj["cx"], yy - obj["cy"]
    c, s = np.cos(obj["theta"]), np.sin(obj["theta"])
    u = (dx * c + dy * s) / obj["a"]
    v = (-dx * s + dy * c) / obj["b"]
    phi = np.arctan2(v, u)
    radius = 1.0 + obj["wobble"] * np.sin(obj["wobble_k"] * phi + obj["wobble_phase"])
    return np.sqrt(u * u + v * v) <= radius


def _part_mask(yy, xx, obj: dict) -> tuple[np.ndarray, np.ndarray]:
    """Class-specific part shape at (px, py), radius r: (bool mask, pattern in [0, 1])."""
    cls, r = obj["cls"], obj["r"]
    dx, dy = xx - obj["px"], yy - obj["py"]
    c, s = np.cos(obj["theta"]), np.sin(obj["theta"])
    u, v = dx * c + dy * s, -dx * s + dy * c  # frame aligned with the body's major axis
    dist = np.sqrt(dx * dx + dy * dy)
    pattern = np.ones_like(dx)
    if cls == 0:  # solid disc
        mask = dist <= r
    elif cls == 1:  # checkered square (equal area to the disc)
        half = 0.886 * r
        mask = (np.abs(u) <= half) & (np.abs(v) <= half)
        cell = max(1.5, r / 2.0)
        checker = (np.floor((u + half) / cell) + np.floor((v + half) / cell)) % 2
        pattern = np.where(checker > 0, 0.35, 1.0)
    elif cls == 2:  # triangle pointing away from the body
        side = 1.35 * r
        t = u * obj["dir"]
        mask = (t >= -0.6 * side) & (np.abs(v) <= (0.9 * side - t) * 0.65)
        mask &= t <= 0.9 * side
    elif cls == 3:  # ring: disc with a dark centre
        mask = dist <= r
        pattern = np.where(dist <= 0.5 * r, 0.15, 1.0)
    elif cls == 4:  # diamond
        mask = np.abs(u) + np.abs(v) <= 1.25 * r
    else:  # cross / plus
        arm = max(0.8, 0.42 * r)
        big = 1.35 * r
        mask = ((np.abs(u) <= big) & (np.abs(v) <= arm)) | ((np.abs(v) <= big) & (np.abs(u) <= arm))
    return mask, pattern.astype(np.float32)


def _stripes(yy, xx, period: float, angle: float, phase: float) -> np.ndarray:
    """Sinusoidal stripes in [-1, 1], float32 [H, W]."""
    proj = xx * np.cos(angle) + yy * np.sin(angle)
    return np.sin(2.0 * np.pi * proj / period + phase).astype(np.float32)


def _body_texture(yy, xx, rng, period: float, tint: np.ndarray) -> np.ndarray:
    """Shared body texture: random base colour + stripes + noise (+ a small tint); [..., 3].

    `yy`, `xx` are the coordinates of the pixels to paint (any matching shapes).
    """
    base = rng.uniform(60, 180, size=3).astype(np.float32) + tint
    amp = rng.uniform(25, 45)
    stripe = _stripes(yy, xx, period, rng.uniform(0, np.pi), rng.uniform(0, 2 * np.pi))
    tex = base + amp * stripe[..., None]
    return tex + 6.0 * rng.standard_normal(tex.shape, dtype=np.float32)


# ------------------------------------------------------------------------------------- layout
def _sample_classes(rng: np.random.Generator, n: int) -> list[int]:
    classes = [int(rng.integers(NUM_CLASSES))]
    for _ in range(n - 1):
        partners = [_PARTNER[c] for c in classes if c in _PARTNER]
        if partners and rng.random() < 0.6:
            classes.append(int(partners[rng.integers(len(partners))]))
        else:
            classes.append(int(rng.integers(NUM_CLASSES)))
    return classes


def _sample_object(rng: np.random.Generator, cls: int, h: int, w: int) -> dict:
    side = min(h, w)
    extent = rng.uniform(*EXTENT) * side  # body length + part
    part_frac = rng.uniform(0.10, 0.20)
    aspect = rng.uniform(0.45, 0.8)
    # Body length 2a plus part diameter ~2r = extent, with pi r^2 = f/(1-f) * pi a b.
    k = np.sqrt(part_frac / (1.0 - part_frac) * aspect)  # r = k * a
    a = extent / (2.0 + 1.4 * k)
    b = aspect * a
    r = max(1.6, k * a)
    theta = rng.uniform(0, 2 * np.pi)
    cx = rng.uniform(0.12, 0.88) * w
    cy = rng.uniform(0.12, 0.88) * h
    direction = 1.0 if rng.random() < 0.5 else -1.0
    offset = direction * (a + 0.3 * r)
    return {
        "cls": cls,
        "cx": cx,
        "cy": cy,
        "a": a,
        "b": b,
        "theta": theta,
        "wobble": rng.uniform(0.03, 0.10),
        "wobble_k": int(rng.integers(2, 5)),
        "wobble_phase": rng.uniform(0, 2 * np.pi),
        "r": r,
        "dir": direction,
        "px": cx + offset * np.cos(theta),
        "py": cy + offset * np.sin(theta),
        "period": _BODY_PERIOD[cls] * rng.uniform(1 - PERIOD_JITTER, 1 + PERIOD_JITTER),
    }


def _layout(rng: np.random.Generator, h: int, w: int, yy, xx):
    """Draw objects until all are visible enough; returns (objects, part masks, instance map)."""
    n = int(rng.choice([1, 2, 3], p=OBJECT_COUNT_P))
    for attempt in range(50):
        if attempt >= 25 and n > 1:
            n -= 1  # crowded layout: use fewer objects
        objs = [_sample_object(rng, c, h, w) for c in _sample_classes(rng, n)]
        parts, inst = [], np.zeros((h, w), np.int32)
        for i, obj in enumerate(objs):
            part, _ = _part_mask(yy, xx, obj)
            parts.append(part)
            inst[_body_mask(yy, xx, obj) | part] = i + 1
        ok = True
        for i, obj in enumerate(objs):
            vis = inst == i + 1
            body_area = np.pi * obj["a"] * obj["b"]
            part_area = 0.8 * np.pi * obj["r"] ** 2
            ok &= (vis & ~parts[i]).sum() >= 0.4 * body_area
            ok &= (vis & parts[i]).sum() >= max(2.0, 0.5 * part_area)
        if ok:
            break
    return objs, parts, inst


# ------------------------------------------------------------------------------------ rendering
def _background(rng: np.random.Generator, h: int, w: int, yy, xx) -> np.ndarray:
    grey = rng.uniform(40, 210)
    c0 = grey + 0.5 * (rng.uniform(0, 255, 3) - grey)
    c1 = grey + 0.5 * (rng.uniform(0, 255, 3) - grey)
    ang = rng.uniform(0, 2 * np.pi)
    t = xx * np.cos(ang) + yy * np.sin(ang)
    t = (t - t.min()) / max(1e-6, float(t.max() - t.min()))
    img = c0 * (1 - t[..., None]) + c1 * t[..., None]
    return img.astype(np.float32) + 10.0 * rng.standard_normal(img.shape, dtype=np.float32)


def _draw_distractors(rng: np.random.Generator, img: np.ndarray, yy, xx) -> None:
    h, w = img.shape[:2]
    side = min(h, w)
    for _ in range(int(rng.integers(2, 7))):
        kind = int(rng.integers(3))
        if kind == 0:  # small blob in the shared body texture, no part, no class cues
            a = rng.uniform(0.04, 0.07) * side
            obj = {
                "cx": rng.uniform(0, w),
                "cy": rng.uniform(0, h),
                "a": a,
                "b": a * rng.uniform(0.45, 0.9),
                "theta": rng.uniform(0, 2 * np.pi),
                "wobble": rng.uniform(0.03, 0.10),
                "wobble_k": int(rng.integers(2, 5)),
                "wobble_phase": rng.uniform(0, 2 * np.pi),
            }
            m = _body_mask(yy, xx, obj)
            period = rng.uniform(3.5, 8.5)
            img[m] = _body_texture(yy[m], xx[m], rng, period, np.zeros(3, np.float32))
        elif kind == 1:  # bundle of thin random stripes inside a random box
            x0, y0 = rng.uniform(0, w), rng.uniform(0, h)
            bw, bh = rng.uniform(0.2, 0.5) * w, rng.uniform(0.2, 0.5) * h
            box = (xx >= x0) & (xx < x0 + bw) & (yy >= y0) & (yy < y0 + bh)
            lines = _stripes(yy, xx, rng.uniform(3, 9), rng.uniform(0, np.pi), rng.uniform(0, 7))
            m = box & (lines > 0.75)
            img[m] = rng.uniform(0, 255, 3)
        else:  # desaturated rectangle
            x0, y0 = rng.uniform(-5, w), rng.uniform(-5, h)
            bw, bh = rng.uniform(0.05, 0.2) * side, rng.uniform(0.05, 0.2) * side
            m = (xx >= x0) & (xx < x0 + bw) & (yy >= y0) & (yy < y0 + bh)
            grey = rng.uniform(30, 220)
            img[m] = grey + 0.3 * (rng.uniform(0, 255, 3) - grey)


def _ignore_band(inst: np.ndarray) -> np.ndarray:
    """Pixels whose 3x3 neighbourhood holds >1 instance id (incl. background): bool [H, W]."""
    k = np.ones((3, 3), np.uint8)
    ids = inst.astype(np.uint8)
    return cv2.dilate(ids, k, borderType=cv2.BORDER_REPLICATE) != cv2.erode(
        ids, k, borderType=cv2.BORDER_REPLICATE
    )


def generate_example(split: str, index: int) -> dict[str, np.ndarray]:
    """Render one image deterministically.

    Returns: {"image": uint8[H, W, 3] RGB, "mask": uint8[H, W] (0 bg, c+1, 255 ignore),
    "labels": float32[NUM_CLASSES]}.
    """
    rng = np.random.default_rng([SEED, SPLIT_INDEX[split], index])
    h, w = (int(v) for v in rng.integers(MIN_SIDE, MAX_SIDE + 1, size=2))
    yy, xx = _grid(h, w)
    while True:
        img = _background(rng, h, w, yy, xx)
        _draw_distractors(rng, img, yy, xx)
        objs, parts, inst = _layout(rng, h, w, yy, xx)
        mask = np.zeros((h, w), np.uint8)
        for i, obj in enumerate(objs):
            vis = inst == i + 1
            on_part = vis & parts[i]
            on_body = vis & ~parts[i]
            period, tint = obj["period"], _BODY_TINT[obj["cls"]]
            img[on_body] = _body_texture(yy[on_body], xx[on_body], rng, period, tint)
            _, pattern = _part_mask(yy, xx, obj)
            colour = _PART_COLOUR[obj["cls"]] + rng.uniform(-15, 15, 3).astype(np.float32)
            noise = 5.0 * rng.standard_normal((int(on_part.sum()), 3), dtype=np.float32)
            img[on_part] = colour * pattern[on_part][:, None] + noise
            mask[vis] = obj["cls"] + 1
        mask[_ignore_band(inst)] = IGNORE
        present = np.unique(mask)
        present = present[(present > 0) & (present != IGNORE)]
        if present.size:
            break
    labels = np.zeros(NUM_CLASSES, np.float32)
    labels[present.astype(np.int64) - 1] = 1.0
    image = np.clip(np.rint(img), 0, 255).astype(np.uint8)
    return {"image": image, "mask": mask, "labels": labels}


class PnocSynthetic(SegmentationBuilder):
    """Embedded synthetic WSSS dataset (see module docstring)."""

    name = "pnoc_synthetic"
    VERSION = tfds.core.Version("2.0.0")
    RELEASE_NOTES: ClassVar[dict[str, str]] = {
        "1.0.0": "Initial release.",
        "2.0.0": "VOC-sized objects (extent 45-100 % of the shorter side, 1-3 objects with "
        "p .50/.35/.15) and learnable body cues (distinct stripe periods +-3 %, 5x tint).",
    }

    NUM_CLASSES = NUM_CLASSES
    DESCRIPTION = __doc__

    def _split_generators(self, dl_manager):
        del dl_manager
        return {split: self._generate_examples(split) for split in SPLIT_SIZES}

    def _generate_examples(self, split: str):
        for i in range(SPLIT_SIZES[split]):
            ex = generate_example(split, i)
            key = f"{split}_{i:06d}"
            yield (
                key,
                {
                    "id": key,
                    "image": fileio.encode_png(ex["image"]),
                    "mask": fileio.encode_png(ex["mask"]),
                    "labels": ex["labels"],
                },
            )
