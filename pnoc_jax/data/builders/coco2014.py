"""`pnoc_coco2014`: MS COCO 2014 as semantic segmentation with image labels (TF-free TFDS).

Reads the official download from ``manual_dir`` (first match wins: ``<manual_dir>/``,
``<manual_dir>/coco2014/``, ``<manual_dir>/coco14/``, ``<manual_dir>/coco/``):

* ``train2014/COCO_train2014_<12-digit id>.jpg`` + ``annotations/instances_train2014.json``
  -> split ``train`` (82,783 images),
* ``val2014/COCO_val2014_<12-digit id>.jpg`` + ``annotations/instances_val2014.json``
  -> split ``val`` (40,504 images).

A split exists when both its image folder and its annotation file do (one without the other is
an error naming the missing one). Every image the JSON lists is an example; its id is the image
id zero-padded to 12 digits, as in the reference's lists.

Masks, from the instance annotations (polygons and RLEs, rasterised by `coco_masks` exactly as
the COCO API does; no pycocotools needed):

* 0 background, 1..80 the categories in category-id order (person 1 ... toothbrush 80; the
  reference's `CLASSES`), 255 ignored;
* where instances overlap, the SMALLER instance (fewer pixels; then the higher annotation id)
  wins: overlaps are mostly an object on or in front of a larger one whose outline was drawn
  around it (a plate on a dining table, a tie on a person), so the smaller one is what the
  pixels show; the rule does not depend on the order of the annotation file;
* crowd regions (``iscrowd=1``) are 255 where no instance covers them: their pixels hold an
  unknown mix of the class and background;
* an image without annotations is all background, with no labels.

Image labels: every category with an annotation whose region is not empty, crowd regions
included (the class is present; its pixels are ignored in evaluation).

`plan_source` checks the layout and fingerprints it without parsing the JSON: the resolved
folder, the SHA-256 of each annotation file (~0.4 s for the 490 MB of the two) and the name
and size of every file in the image folders (one os.stat each). Building decodes every JPEG
and checks its size against the JSON; a missing image, an undecodable one, a size mismatch,
an RLE of another size, an unknown category or an annotation of an unlisted image raises,
naming the file (and the annotation id), and leaves nothing behind.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from collections import defaultdict
from pathlib import Path
from typing import ClassVar

import cv2
import numpy as np
import tensorflow_datasets as tfds

from pnoc_jax.core import fileio
from pnoc_jax.core.masks import IGNORE
from pnoc_jax.data.builders import coco_masks
from pnoc_jax.data.builders.common import SegmentationBuilder

# The 80 categories of instances_*2014.json in category-id order (ids 1..90 with gaps).
CLASS_NAMES = (
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
NUM_CLASSES = len(CLASS_NAMES)
# The 12 supercategories of instances_*2014.json with their categories, in category-id order
# (`category_index` checks them against the annotation file at every build); the semantic
# groups of the class analysis (method.md §15).
SUPERCATEGORIES = {
    "person": CLASS_NAMES[0:1],
    "vehicle": CLASS_NAMES[1:9],
    "outdoor": CLASS_NAMES[9:14],
    "animal": CLASS_NAMES[14:24],
    "accessory": CLASS_NAMES[24:29],
    "sports": CLASS_NAMES[29:39],
    "kitchen": CLASS_NAMES[39:46],
    "food": CLASS_NAMES[46:56],
    "furniture": CLASS_NAMES[56:62],
    "electronic": CLASS_NAMES[62:68],
    "appliance": CLASS_NAMES[68:73],
    "indoor": CLASS_NAMES[73:80],
}
SPLITS = {"train": "train2014", "val": "val2014"}  # split -> image folder / annotation suffix
LABEL_SOURCE = "instances_<split>2014.json (every category with a non-empty annotation)"
MANUAL_DIR_HINT = (
    "the COCO 2014 folder holding train2014/, val2014/ and annotations/ (or its parent, with "
    "the folder named coco2014, coco14 or coco)"
)


def find_root(manual_dir: str | os.PathLike) -> Path:
    """The COCO folder under `manual_dir` (see module docstring); FileNotFoundError listing
    every place tried when none holds ``annotations/`` and an image folder."""
    base = Path(manual_dir)
    candidates = [base, base / "coco2014", base / "coco14", base / "coco"]
    for cand in candidates:
        if (cand / "annotations").is_dir() and any((cand / f).is_dir() for f in SPLITS.values()):
            return cand
    tried = ", ".join(repr(str(c)) for c in candidates)
    raise FileNotFoundError(
        f"No COCO 2014 folder found under manual_dir={str(base)!r}: tried {tried}, none holds "
        f"annotations/ and train2014/ or val2014/. Point manual_dir at {MANUAL_DIR_HINT}."
    )


def annotation_file(root: Path, split: str) -> Path:
    return root / "annotations" / f"instances_{SPLITS[split]}.json"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _folder_sizes(folder: Path) -> dict[str, int]:
    """Name -> size of every regular file in `folder` (one stat per entry)."""
    with os.scandir(folder) as entries:
        return {e.name: e.stat().st_size for e in entries if e.is_file()}


@dataclasses.dataclass(frozen=True)
class SourcePlan:
    """What a build of `root` reads: each split's image folder and annotation file."""

    root: Path
    annotations: dict[str, Path]  # split -> instances_<folder>.json
    annotation_sha256: dict[str, str]
    images: dict[str, dict[str, int]]  # split -> {file name: size} of its image folder

    @property
    def splits(self) -> tuple[str, ...]:
        return tuple(self.annotations)

    def record(self) -> dict:
        """What `source.json` says about this source besides its identity."""
        return {
            "root": str(self.root.resolve()),
            "annotations": {s: str(p.resolve()) for s, p in self.annotations.items()},
            "image_files": {s: len(files) for s, files in self.images.items()},
            "labels": LABEL_SOURCE,
        }

    def fingerprint(self) -> str:
        """16 hex digits of SHA-256 over the resolved root, each annotation file's SHA-256 and
        the name and size of every file of each image folder."""
        h = hashlib.sha256()
        h.update(f"root\t{self.root.resolve()}\n".encode())
        for split in sorted(self.annotations):
            h.update(f"split\t{split}\t{self.annotation_sha256[split]}\n".encode())
            files = self.images[split]
            h.update("".join(f"{n}\t{files[n]}\n" for n in sorted(files)).encode())
        return h.hexdigest()[:16]


def plan_source(manual_dir: str | os.PathLike) -> SourcePlan:
    """Resolves the COCO folder and fingerprints each split's files, without parsing JSON.

    FileNotFoundError names a split's missing image folder or annotation file (when the other
    one exists) or a manual_dir holding neither split.
    """
    root = find_root(manual_dir)
    annotations, digests, images = {}, {}, {}
    for split, folder in SPLITS.items():
        ann, img = annotation_file(root, split), root / folder
        if not ann.is_file() and not img.is_dir():
            continue
        for path, kind in ((ann, "annotation file"), (img, "image folder")):
            if not path.exists():
                raise FileNotFoundError(
                    f"Expected COCO {kind} not found: {str(path)!r} (split {split!r} needs "
                    f"{str(img)!r} and {str(ann)!r})"
                )
        annotations[split], digests[split], images[split] = ann, _sha256(ann), _folder_sizes(img)
    if not annotations:
        raise FileNotFoundError(
            f"No COCO split under {str(root)!r}: expected train2014/ with "
            "annotations/instances_train2014.json and/or val2014/ with instances_val2014.json"
        )
    return SourcePlan(root, annotations, digests, images)


def category_index(categories: list[dict], path: Path) -> dict[int, int]:
    """category id -> segmentation index 1..80 (id order); ValueError unless the file's
    categories are COCO's 80 (`CLASS_NAMES`) in their supercategories (`SUPERCATEGORIES`)."""
    ordered = sorted(categories, key=lambda c: c["id"])
    names = tuple(c["name"] for c in ordered)
    if names != CLASS_NAMES:
        unknown = sorted(set(names) ^ set(CLASS_NAMES))
        raise ValueError(
            f"COCO annotations {str(path)!r} do not have COCO's 80 categories in id order "
            f"(differences: {unknown[:5]}{' ...' if len(unknown) > 5 else ''})"
        )
    supercategory = {name: group for group, names in SUPERCATEGORIES.items() for name in names}
    moved = [c["name"] for c in ordered if c.get("supercategory", supercategory[c["name"]])
             != supercategory[c["name"]]]  # fmt: skip
    if moved:
        raise ValueError(
            f"COCO annotations {str(path)!r}: the supercategories of {moved[:5]} differ from "
            "COCO 2014's (coco2014.SUPERCATEGORIES)"
        )
    return {int(c["id"]): i for i, c in enumerate(ordered, start=1)}


def semantic_mask(
    annotations: list[dict], h: int, w: int, categories: dict[int, int]
) -> tuple[np.ndarray, np.ndarray]:
    """(uint8[h, w] mask, float32[80] labels) of one image's annotations (module docstring)."""
    labels = np.zeros(NUM_CLASSES, np.float32)
    crowd = np.zeros((h, w), bool)
    instances = []
    for ann in annotations:
        try:
            index = categories[int(ann["category_id"])]
        except KeyError:
            raise ValueError(f"unknown category_id {ann.get('category_id')!r}") from None
        try:
            region = coco_masks.annotation_mask(ann["segmentation"], h, w)
        except (ValueError, KeyError, TypeError) as e:
            raise ValueError(f"annotation {ann.get('id')!r}: {e}") from None
        area = int(region.sum())
        if area == 0:
            continue
        labels[index - 1] = 1.0
        if ann.get("iscrowd"):
            crowd |= region
        else:
            instances.append((area, int(ann.get("id", 0)), index, region))
    mask = np.zeros((h, w), np.uint8)
    mask[crowd] = IGNORE
    for _, _, index, region in sorted(instances, key=lambda r: (-r[0], r[1])):
        mask[region] = index  # larger first: the smaller instance is drawn last and wins
    return mask, labels


def read_image(path: Path) -> tuple[bytes, tuple[int, int]]:
    """Original JPEG bytes and (H, W), after checking the file decodes."""
    if not path.is_file():
        raise FileNotFoundError(f"Expected COCO image not found: {str(path)!r}")
    data = path.read_bytes()
    if not data:
        raise ValueError(f"Empty COCO image file (0 bytes): {str(path)!r}")
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if image is None:
        raise ValueError(f"Corrupted or undecodable COCO image: {str(path)!r}")
    return data, image.shape[:2]


def read_annotations(path: Path) -> tuple[list[dict], dict[int, list[dict]], dict[int, int]]:
    """(images sorted by id, annotations by image id, category id -> index) of a JSON file."""
    try:
        with open(path, "rb") as f:
            data = json.load(f)
        images, anns = data["images"], data.get("annotations", [])
        categories = category_index(data["categories"], path)
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise ValueError(f"COCO annotations {str(path)!r} are not instances JSON: {e!r}") from e
    by_image: dict[int, list[dict]] = defaultdict(list)
    known = {int(im["id"]) for im in images}
    for ann in anns:
        image_id = int(ann["image_id"])
        if image_id not in known:
            raise ValueError(
                f"COCO annotations {str(path)!r}: annotation {ann.get('id')!r} belongs to image "
                f"{image_id}, which the file does not list"
            )
        by_image[image_id].append(ann)
    return sorted(images, key=lambda im: int(im["id"])), by_image, categories


class PnocCoco2014(SegmentationBuilder):
    """MS COCO 2014 (train2014, val2014) with semantic masks and image labels."""

    name = "pnoc_coco2014"
    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES: ClassVar[dict[str, str]] = {"1.0.0": "Initial release."}
    MANUAL_DOWNLOAD_INSTRUCTIONS = (
        f"Point manual_dir at {MANUAL_DIR_HINT}: train2014/*.jpg, val2014/*.jpg and "
        "annotations/instances_{train,val}2014.json from https://cocodataset.org."
    )

    NUM_CLASSES = NUM_CLASSES
    IMAGE_FORMAT = "jpeg"
    DESCRIPTION = "MS COCO 2014 semantic masks (80 classes) from the instance annotations."
    HOMEPAGE = "https://cocodataset.org"

    def _split_generators(self, dl_manager):
        plan = plan_source(os.fspath(dl_manager.manual_dir))
        return {
            split: self._generate_examples(plan.root / SPLITS[split], plan.annotations[split])
            for split in plan.splits
        }

    def _generate_examples(self, folder: Path, annotations: Path):
        images, by_image, categories = read_annotations(annotations)
        for info in images:
            image_id = int(info["id"])
            path = folder / info["file_name"]
            data, (h, w) = read_image(path)
            if (h, w) != (int(info["height"]), int(info["width"])):
                raise ValueError(
                    f"COCO image {str(path)!r} is {h}x{w} but {str(annotations)!r} says "
                    f"{info['height']}x{info['width']}"
                )
            try:
                mask, labels = semantic_mask(by_image.get(image_id, []), h, w, categories)
            except ValueError as e:
                raise ValueError(
                    f"COCO annotations {str(annotations)!r}, image {path.name}: {e}"
                ) from None
            ex_id = f"{image_id:012d}"
            yield (
                ex_id,
                {
                    "id": ex_id,
                    "image": data,
                    "mask": fileio.encode_png(mask),
                    "labels": labels,
                },
            )
