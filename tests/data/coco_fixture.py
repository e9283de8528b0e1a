"""A tiny COCO 2014 download in the official layout and JSON format, for the builder tests.

`write_coco(root)` writes ``root/{train2014,val2014}/COCO_<split>_<12-digit id>.jpg`` and
``root/annotations/instances_{train,val}2014.json`` with COCO's 80 categories (official ids,
1..90 with gaps), polygons (one and several parts), an uncompressed RLE crowd region, a
compressed RLE, overlapping instances, an empty polygon, a greyscale JPEG and images without
annotations. `SPECIAL` names the images the tests look at.
"""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np

# COCO 2014's category ids (the 80 of instances_*2014.json) and names, written out here so
# that the fixture does not take them from the code under test.
CATEGORY_IDS = (
    *range(1, 12), *range(13, 26), 27, 28, *range(31, 45), *range(46, 66), 67, 70,
    *range(72, 83), *range(84, 91),
)  # fmt: skip
CATEGORY_NAMES = (
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat",
    "traffic light", "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog",
    "horse", "sheep", "cow", "elephant", "bear", "zebra", "giraffe", "backpack", "umbrella",
    "handbag", "tie", "suitcase", "frisbee", "skis", "snowboard", "sports ball", "kite",
    "baseball bat", "baseball glove", "skateboard", "surfboard", "tennis racket", "bottle",
    "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple", "sandwich",
    "orange", "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair", "couch",
    "potted plant", "bed", "dining table", "toilet", "tv", "laptop", "mouse", "remote",
    "keyboard", "cell phone", "microwave", "oven", "toaster", "sink", "refrigerator", "book",
    "clock", "vase", "scissors", "teddy bear", "hair drier", "toothbrush",
)  # fmt: skip
# Their supercategories as instances_*2014.json has them: (name, number of categories), id order.
_SUPERCATEGORY_RUNS = (
    ("person", 1), ("vehicle", 8), ("outdoor", 5), ("animal", 10), ("accessory", 5),
    ("sports", 10), ("kitchen", 7), ("food", 10), ("furniture", 6), ("electronic", 6),
    ("appliance", 5), ("indoor", 7),
)  # fmt: skip
CATEGORY_SUPERCATEGORIES = tuple(s for s, n in _SUPERCATEGORY_RUNS for _ in range(n))
assert len(CATEGORY_IDS) == len(CATEGORY_NAMES) == len(CATEGORY_SUPERCATEGORIES) == 80

PERSON, DOG, CAT, CUP, TABLE, TOOTHBRUSH = 1, 18, 17, 47, 67, 90  # category ids

# Images the tests look at: (split, image id).
SPECIAL = {
    "overlap": ("train", 9),  # a cup polygon on a dining table: the cup wins
    "crowd": ("train", 25),  # a person crowd RLE under a dog polygon
    "compressed": ("train", 31),  # a compressed-RLE cat and a two-part person
    "empty": ("train", 40),  # no annotations
    "degenerate": ("train", 57),  # a toothbrush polygon of one repeated point: no pixel
    "grey": ("val", 7),  # a greyscale JPEG
    "val_empty": ("val", 81),
}


def _rle_counts(mask: np.ndarray) -> list[int]:
    """Uncompressed RLE counts of a bool mask (column-major, 0s first)."""
    flat = mask.T.ravel().astype(np.int8)
    change = np.flatnonzero(np.diff(flat)) + 1
    bounds = np.concatenate([[0], change, [flat.size]])
    counts = np.diff(bounds).tolist()
    return counts if flat[0] == 0 else [0, *counts]


def _compress(counts: list[int]) -> str:
    """COCO's compressed RLE string (5-bit groups, differences from the count two before)."""
    out = []
    for i, count in enumerate(counts):
        x = count - counts[i - 2] if i > 2 else count
        more = True
        while more:
            c = x & 0x1F
            x >>= 5
            more = x != -1 if c & 0x10 else x != 0
            out.append(chr(48 + (c | 0x20 if more else c)))
    return "".join(out)


def _polygon(rng, h: int, w: int, n: int = 7) -> list[float]:
    cy, cx = rng.uniform(0.3, 0.7) * h, rng.uniform(0.3, 0.7) * w
    ang = np.sort(rng.uniform(0, 2 * np.pi, n))
    r = rng.uniform(0.15, 0.45, n) * min(h, w)
    pts = np.stack([cx + r * np.cos(ang), cy + r * np.sin(ang)], 1)
    return np.round(pts, 2).ravel().tolist()


def _image(rng, h: int, w: int, grey: bool = False) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w]
    base = np.stack([xx * 4 % 256, yy * 4 % 256, (xx + yy) * 2 % 256], -1)
    img = np.clip(base + rng.integers(-8, 9, (h, w, 3)), 0, 255).astype(np.uint8)
    return img[..., 0] if grey else img


def _annotations(split: str, image_id: int, h: int, w: int, rng, next_id) -> list[dict]:
    def ann(category, segmentation, crowd=0):
        return {
            "id": next_id(),
            "image_id": image_id,
            "category_id": category,
            "segmentation": segmentation,
            "iscrowd": crowd,
            "area": 0.0,  # not read
            "bbox": [0, 0, 1, 1],  # not read
        }

    key = (split, image_id)
    if key == SPECIAL["overlap"]:
        return [
            ann(CUP, [[10.5, 12, 22, 11.5, 21, 24, 11, 23]]),
            ann(TABLE, [[2, 3, w - 3, 2.5, w - 2, h - 3, 3, h - 2]]),
        ]
    if key == SPECIAL["crowd"]:
        crowd = np.zeros((h, w), bool)
        crowd[5 : h - 5, 4 : w // 2 + 6] = True
        return [
            ann(PERSON, {"counts": _rle_counts(crowd), "size": [h, w]}, crowd=1),
            ann(DOG, [[w // 2 - 4, 8, w - 6, 9, w - 8, h - 10, w // 2, h - 8]]),
        ]
    if key == SPECIAL["compressed"]:
        cat = np.zeros((h, w), bool)
        cat[3:20, 5:30] = True
        cat[8:12, 10:14] = False  # a hole: only an RLE can have one
        return [
            ann(CAT, {"counts": _compress(_rle_counts(cat)), "size": [h, w]}),
            ann(PERSON, [[30, 22, 40, 22, 40, 34, 30, 34], [2, 30, 9, 30, 5, 38.5]]),
        ]
    if key in (SPECIAL["empty"], SPECIAL["val_empty"]):
        return []
    if key == SPECIAL["degenerate"]:
        return [
            ann(TOOTHBRUSH, [[20.2, 20.2, 20.2, 20.2, 20.2, 20.2]]),
            ann(CAT, [_polygon(rng, h, w)]),
        ]
    picks = rng.choice(CATEGORY_IDS, size=rng.integers(1, 4), replace=False)
    return [ann(int(c), [_polygon(rng, h, w)]) for c in picks]


# split -> image ids, in the (unsorted) order the JSON lists them.
IMAGE_IDS = {
    "train": [57, 9, 140, 25, 31, 40, 66, 3, 91, 112],
    "val": [81, 7, 200, 45],
}


def write_coco(root: Path, seed: int = 0) -> Path:
    """Writes the fixture under `root` (which becomes the COCO folder) and returns `root`."""
    rng = np.random.default_rng(seed)
    counter = iter(range(1000, 10_000))
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    for split, ids in IMAGE_IDS.items():
        folder = root / f"{split}2014"
        folder.mkdir(exist_ok=True)
        images, annotations = [], []
        for image_id in ids:
            h, w = int(rng.integers(40, 56)), int(rng.integers(44, 64))
            name = f"COCO_{split}2014_{image_id:012d}.jpg"
            grey = (split, image_id) == SPECIAL["grey"]
            pixels = _image(rng, h, w, grey)
            cv2.imwrite(str(folder / name), pixels if grey else pixels[..., ::-1])
            images.append(
                {"id": image_id, "file_name": name, "height": h, "width": w, "license": 1}
            )
            annotations += _annotations(split, image_id, h, w, rng, lambda: next(counter))
        categories = [
            {"supercategory": s, "id": i, "name": n}
            for i, n, s in zip(CATEGORY_IDS, CATEGORY_NAMES, CATEGORY_SUPERCATEGORIES)
        ]
        data = {
            "info": {"description": "fixture"},
            "licenses": [],
            "images": images,
            "annotations": annotations,
            "categories": categories[::-1],  # the order in the file does not matter
        }
        (root / "annotations" / f"instances_{split}2014.json").write_text(json.dumps(data))
    return root
