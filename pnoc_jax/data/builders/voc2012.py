"""`pnoc_voc2012`: PASCAL VOC 2012 segmentation as a TF-free TFDS builder (ArrayRecord).

Reads a user's copy from ``manual_dir``. Accepted layouts (first match wins):

1. ``<manual_dir>/VOCdevkit/VOC2012/`` (``manual_dir`` = the folder containing VOCdevkit), or
2. ``<manual_dir>/`` itself is the ``VOC2012`` folder (it holds ``JPEGImages/``).

Inside the VOC2012 folder ``ROOT`` it uses:

* ``ROOT/JPEGImages/{id}.jpg``, ``ROOT/SegmentationClass/{id}.png`` (palette PNGs; read with PIL as
  indices; RGB masks are converted through the VOC colour map),
* ``ROOT/ImageSets/Segmentation/{train,val}.txt`` -> splits ``train`` and ``val``,
* split ``train_aug`` only when ``ROOT/SegmentationClassAug/`` exists AND a train_aug list is found
  at one of (first match wins): ``ROOT/ImageSets/Segmentation/train_aug.txt``,
  ``ROOT/ImageSets/SegmentationAug/train_aug.txt``, ``ROOT/SegmentationClassAug/train_aug.txt``,
  ``<manual_dir>/train_aug.txt``. Lines are either ids (``2007_000032``) or the DeepLab form
  ``/JPEGImages/2007_000032.jpg /SegmentationClassAug/2007_000032.png``. Masks for train_aug come
  from ``SegmentationClassAug/{id}.png``, falling back to ``SegmentationClass/{id}.png``.

Labels are the classes 1..20 present in the mask (0 and 255 ignored) as a 20-dim multi-hot.
Every JPEG is decoded at build time; a missing file or folder raises FileNotFoundError and an
undecodable image, an invalid mask or an image/mask size mismatch raises ValueError, each naming
the exact path(s), so a build either completes or leaves nothing behind (TFDS writes to a
temporary directory that is renamed only on success).

Features: ``id`` (Text), ``image`` (the original JPEG bytes), ``mask`` (single-channel index PNG
bytes, mode 'L', shape (H, W, 1) -- never a palette PNG, which TFDS+OpenCV would decode as RGB),
``labels`` (float32[20]).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import ClassVar

import cv2
import numpy as np
import tensorflow_datasets as tfds
from PIL import Image

from pnoc_jax.core import fileio
from pnoc_jax.core.masks import IGNORE, PALETTE
from pnoc_jax.data.builders.common import SegmentationBuilder

CLASS_NAMES = (
    "aeroplane",
    "bicycle",
    "bird",
    "boat",
    "bottle",
    "bus",
    "car",
    "cat",
    "chair",
    "cow",
    "diningtable",
    "dog",
    "horse",
    "motorbike",
    "person",
    "pottedplant",
    "sheep",
    "sofa",
    "train",
    "tvmonitor",
)
NUM_CLASSES = len(CLASS_NAMES)


def find_voc_root(manual_dir: str | os.PathLike) -> Path:
    """Resolve the VOC2012 folder from `manual_dir` (see module docstring)."""
    base = Path(manual_dir)
    candidates = [base / "VOCdevkit" / "VOC2012", base]
    for cand in candidates:
        if (cand / "JPEGImages").is_dir():
            return cand
    raise FileNotFoundError(
        f"No VOC2012 folder found under manual_dir={str(base)!r}: expected "
        f"{str(candidates[0] / 'JPEGImages')!r} or {str(candidates[1] / 'JPEGImages')!r}."
    )


def _require_dir(path: Path) -> Path:
    if not path.is_dir():
        raise FileNotFoundError(f"Expected VOC folder not found: {str(path)!r}")
    return path


def _require_file(path: Path) -> Path:
    if not path.is_file():
        raise FileNotFoundError(f"Expected VOC file not found: {str(path)!r}")
    return path


def read_id_list(path: Path) -> list[str]:
    """Ids from a VOC/DeepLab list file (first token of each line, basename without suffix)."""
    ids = []
    for line in _require_file(path).read_text().splitlines():
        tokens = line.split()
        if tokens:
            ids.append(Path(tokens[0]).stem)
    if not ids:
        raise ValueError(f"List file {str(path)!r} contains no ids.")
    return ids


def find_train_aug(root: Path, manual_dir: Path) -> Path | None:
    """The train_aug list file, if SegmentationClassAug/ and a list exist; else None."""
    if not (root / "SegmentationClassAug").is_dir():
        return None
    for cand in (
        root / "ImageSets" / "Segmentation" / "train_aug.txt",
        root / "ImageSets" / "SegmentationAug" / "train_aug.txt",
        root / "SegmentationClassAug" / "train_aug.txt",
        manual_dir / "train_aug.txt",
    ):
        if cand.is_file():
            return cand
    return None


def read_mask(path: Path) -> np.ndarray:
    """Class-index mask uint8[H, W] from a palette, grey or RGB VOC PNG."""
    try:
        with Image.open(path) as im:
            im.load()
            mode = im.mode
            arr = np.array(im)
    except Exception as e:
        raise ValueError(f"Could not read VOC mask {str(path)!r}: {e}") from e
    if mode in ("P", "L"):
        mask = arr.astype(np.uint8)
    elif mode in ("I", "I;16", "I;16B", "I;16L"):
        if arr.min() < 0 or arr.max() > 255:
            raise ValueError(f"VOC mask {str(path)!r} has values outside 0..255.")
        mask = arr.astype(np.uint8)
    elif mode in ("RGB", "RGBA"):
        mask = _rgb_to_index(arr[..., :3], path)
    else:
        raise ValueError(f"VOC mask {str(path)!r} has unsupported PIL mode {mode!r}.")
    bad = np.setdiff1d(np.unique(mask), np.r_[np.arange(NUM_CLASSES + 1), IGNORE])
    if bad.size:
        raise ValueError(f"VOC mask {str(path)!r} has invalid class indices {bad.tolist()}.")
    return mask


def _rgb_to_index(rgb: np.ndarray, path: Path) -> np.ndarray:
    cmap = PALETTE.astype(np.int64)
    rgb = rgb.astype(np.int64)
    codes = (rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]
    table = {int((c[0] << 16) | (c[1] << 8) | c[2]): i for i, c in enumerate(cmap)}
    valid = [*range(NUM_CLASSES + 1), IGNORE]
    lut = {code: idx for code, idx in table.items() if idx in valid}
    uniq, inv = np.unique(codes, return_inverse=True)
    unknown = [int(u) for u in uniq if int(u) not in lut]
    if unknown:
        raise ValueError(
            f"RGB VOC mask {str(path)!r} has colours outside the VOC colour map: "
            f"{[((u >> 16) & 255, (u >> 8) & 255, u & 255) for u in unknown[:5]]}"
        )
    return np.array([lut[int(u)] for u in uniq], np.uint8)[inv].reshape(rgb.shape[:2])


def read_jpeg(path: Path) -> tuple[bytes, tuple[int, int]]:
    """Original JPEG bytes and (H, W), after checking the file decodes; ValueError if not."""
    data = _require_file(path).read_bytes()
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if image is None:
        raise ValueError(f"Corrupted or undecodable VOC image: {str(path)!r}")
    return data, image.shape[:2]


class PnocVoc2012(SegmentationBuilder):
    """PASCAL VOC 2012 segmentation (+ optional SBD train_aug) from a local VOCdevkit."""

    name = "pnoc_voc2012"
    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES: ClassVar[dict[str, str]] = {"1.0.0": "Initial release."}
    MANUAL_DOWNLOAD_INSTRUCTIONS = (
        "Point manual_dir at a folder containing VOCdevkit/VOC2012/ (or at the VOC2012 folder "
        "itself) with JPEGImages/, SegmentationClass/ and ImageSets/Segmentation/{train,val}.txt; "
        "optionally SegmentationClassAug/ plus a train_aug.txt list for the train_aug split."
    )

    NUM_CLASSES = NUM_CLASSES
    IMAGE_FORMAT = "jpeg"
    DESCRIPTION = "PASCAL VOC 2012 segmentation with image-level labels from the masks."
    HOMEPAGE = "http://host.robots.ox.ac.uk/pascal/VOC/voc2012/"

    def _split_generators(self, dl_manager):
        manual_dir = Path(os.fspath(dl_manager.manual_dir))
        root = find_voc_root(manual_dir)
        images = _require_dir(root / "JPEGImages")
        seg = _require_dir(root / "SegmentationClass")
        lists = _require_dir(root / "ImageSets" / "Segmentation")
        splits = {}
        for split in ("train", "val"):
            ids = read_id_list(lists / f"{split}.txt")
            pairs = [(images / f"{i}.jpg", seg / f"{i}.png") for i in ids]
            splits[split] = ids, pairs
        aug_list = find_train_aug(root, manual_dir)
        if aug_list is not None:
            aug = root / "SegmentationClassAug"
            ids = read_id_list(aug_list)
            pairs = []
            for i in ids:
                mask = aug / f"{i}.png"
                if not mask.is_file() and (seg / f"{i}.png").is_file():
                    mask = seg / f"{i}.png"
                if not mask.is_file():
                    raise FileNotFoundError(
                        f"Expected VOC mask not found: {str(aug / f'{i}.png')!r} "
                        f"(nor {str(seg / f'{i}.png')!r})"
                    )
                pairs.append((images / f"{i}.jpg", mask))
            splits["train_aug"] = ids, pairs
        # Fail before writing anything if a listed file is missing.
        for _, pairs in splits.values():
            for image_path, mask_path in pairs:
                _require_file(image_path)
                _require_file(mask_path)
        return {
            split: self._generate_examples(ids, pairs) for split, (ids, pairs) in splits.items()
        }

    def _generate_examples(self, ids: list[str], pairs: list[tuple[Path, Path]]):
        for ex_id, (image_path, mask_path) in zip(ids, pairs, strict=True):
            data, (h, w) = read_jpeg(image_path)
            mask = read_mask(mask_path)
            if mask.shape != (h, w):
                raise ValueError(
                    f"Mask {str(mask_path)!r} has size {mask.shape} but image "
                    f"{str(image_path)!r} has size {(h, w)}."
                )
            present = np.unique(mask)
            present = present[(present >= 1) & (present <= NUM_CLASSES)].astype(np.int64)
            labels = np.zeros(NUM_CLASSES, np.float32)
            labels[present - 1] = 1.0
            yield (
                ex_id,
                {
                    "id": ex_id,
                    "image": data,
                    "mask": fileio.encode_png(mask),
                    "labels": labels,
                },
            )
