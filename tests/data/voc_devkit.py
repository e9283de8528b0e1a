"""Tiny VOCdevkits in the real on-disk layout, for the VOC builder and source tests."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from pnoc_jax.core.masks import PALETTE
from pnoc_jax.data.builders.voc2012 import CLASS_NAMES

# id -> (height, width, [(class index, (y0, x0, y1, x1)), ...])
SPECS = {
    "2007_000032": (40, 56, [(1, (5, 5, 20, 30)), (15, (22, 30, 38, 54))]),
    "2007_000039": (48, 36, [(20, (10, 4, 40, 30))]),
    "2007_000063": (32, 44, [(8, (2, 2, 30, 20)), (12, (4, 24, 28, 42))]),
    "2008_000002": (36, 36, [(3, (6, 6, 30, 30))]),
    "2008_000003": (44, 50, [(15, (0, 0, 44, 25)), (13, (10, 26, 40, 50))]),
}
TRAIN = ["2007_000032", "2007_000039", "2008_000002"]
VAL = ["2007_000063", "2008_000003"]


def index_mask(h: int, w: int, objects) -> np.ndarray:
    """Index mask with a 255 border around every object, as in VOC."""
    mask = np.zeros((h, w), np.uint8)
    for cls, (y0, x0, y1, x1) in objects:
        mask[max(0, y0 - 1) : y1 + 1, max(0, x0 - 1) : x1 + 1] = 255
        mask[y0:y1, x0:x1] = cls
    return mask


def rgb_image(h: int, w: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    base = np.stack([xx * 255 // max(1, w - 1), yy * 255 // max(1, h - 1), 0 * xx + 90], -1)
    return np.clip(base + rng.integers(-4, 5, (h, w, 3)), 0, 255).astype(np.uint8)


def save_palette_png(mask: np.ndarray, path: Path) -> None:
    im = Image.fromarray(mask, mode="P")
    im.putpalette(PALETTE.reshape(-1).tolist())
    im.save(path)


def write_voc(root: Path, with_aug: bool = False) -> Path:
    """Write <root>/VOCdevkit/VOC2012 and return the VOC2012 folder."""
    voc = root / "VOCdevkit" / "VOC2012"
    for sub in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        (voc / sub).mkdir(parents=True, exist_ok=True)
    for k, (ex_id, (h, w, objects)) in enumerate(SPECS.items()):
        rgb = rgb_image(h, w, k)
        if k % 2:
            cv2.imwrite(str(voc / "JPEGImages" / f"{ex_id}.jpg"), rgb[..., ::-1])
        else:
            Image.fromarray(rgb).save(voc / "JPEGImages" / f"{ex_id}.jpg", quality=90)
        save_palette_png(index_mask(h, w, objects), voc / "SegmentationClass" / f"{ex_id}.png")
    lists = voc / "ImageSets" / "Segmentation"
    (lists / "train.txt").write_text("\n".join(TRAIN) + "\n")
    (lists / "val.txt").write_text("\n".join(VAL) + "\n")
    if with_aug:
        aug = voc / "SegmentationClassAug"
        aug.mkdir()
        # SBD-style grey ('L') masks for two ids, with a different label; the third falls back.
        for ex_id in ("2007_000032", "2007_000039"):
            h, w, _ = SPECS[ex_id]
            sbd = index_mask(h, w, [(7, (4, 4, 20, 20))])
            Image.fromarray(sbd, mode="L").save(aug / f"{ex_id}.png")
        (lists / "train_aug.txt").write_text(
            "/JPEGImages/2007_000032.jpg /SegmentationClassAug/2007_000032.png\n"
            "2007_000039\n2008_000002\n"
        )
    return voc


def expected_labels(ex_id: str) -> np.ndarray:
    labels = np.zeros(len(CLASS_NAMES), np.float32)
    for cls, _ in SPECS[ex_id][2]:
        labels[cls - 1] = 1
    return labels


# id -> extra <object>s of its XML beyond the mask's: (name, (xmin, ymin, xmax, ymax) as text,
# difficult). The labels from XML are the mask's classes plus the listed names whose box is
# not empty after truncation and clipping (`XML_ONLY`).
XML_EXTRA = {
    "2007_000032": [("bottle", ("3.9", "4", "9.2", "12"), "1")],  # difficult: still a label
    "2007_000039": [("cat", ("10", "5", "10.7", "30"), "0")],  # 10 -> 10: zero width, skipped
    "2008_000002": [("sofa", ("30", "2", "80", "20"), "0")],  # clipped to x 30..35: kept
    "2008_000003": [("dog", ("60", "50", "70", "60"), "0")],  # all outside: clips to a point
}
XML_ONLY = {"2007_000032": ["bottle"], "2008_000002": ["sofa"]}


def _object_xml(name: str, box: tuple[str, str, str, str], difficult: str = "0") -> str:
    x0, y0, x1, y1 = box
    return (
        f"<object><name>{name}</name><pose>Unspecified</pose><truncated>0</truncated>"
        f"<difficult>{difficult}</difficult><bndbox><xmin>{x0}</xmin><ymin>{y0}</ymin>"
        f"<xmax>{x1}</xmax><ymax>{y1}</ymax></bndbox></object>"
    )


def write_annotations(voc: Path) -> None:
    """Annotations/<id>.xml for every id: the mask's objects (boxes 1-based, as VOC) + XML_EXTRA."""
    folder = voc / "Annotations"
    folder.mkdir(exist_ok=True)
    for ex_id, (h, w, objects) in SPECS.items():
        parts = [
            _object_xml(CLASS_NAMES[cls - 1], (str(x0 + 1), str(y0 + 1), str(x1), str(y1)))
            for cls, (y0, x0, y1, x1) in objects
        ]
        parts += [_object_xml(n, box, d) for n, box, d in XML_EXTRA.get(ex_id, [])]
        (folder / f"{ex_id}.xml").write_text(
            f"<annotation><folder>VOC2012</folder><filename>{ex_id}.jpg</filename><size>"
            f"<width>{w}</width><height>{h}</height><depth>3</depth></size><segmented>1"
            f"</segmented>{''.join(parts)}</annotation>\n"
        )


def expected_xml_labels(ex_id: str) -> np.ndarray:
    labels = expected_labels(ex_id)
    for name in XML_ONLY.get(ex_id, []):
        labels[CLASS_NAMES.index(name)] = 1
    return labels
