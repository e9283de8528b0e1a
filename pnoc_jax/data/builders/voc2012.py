"""`pnoc_voc2012`: PASCAL VOC 2012 segmentation as a TF-free TFDS builder (ArrayRecord).

Reads a user's copy from ``manual_dir``. Accepted layouts (first match wins):

1. ``<manual_dir>/VOCdevkit/VOC2012/`` (``manual_dir`` = the folder holding VOCdevkit),
2. ``<manual_dir>/VOC2012/`` (``manual_dir`` = VOCdevkit itself), or
3. ``<manual_dir>/`` itself is the ``VOC2012`` folder (it holds ``JPEGImages/``).

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

Image labels (20-dim multi-hot) come from ``ROOT/Annotations/{id}.xml`` when that folder exists,
as the reference's (§11): the ``<name>`` of every ``<object>``, difficult and truncated ones
included, except objects whose box is empty once its corners are truncated to integers and
clipped to the image (`read_xml_labels`). Every listed id then needs its XML. Without an
``Annotations/`` folder they are the classes 1..20 present in the mask (0 and 255 ignored);
`SourcePlan.labels_from` says which, and the build's ``source.json`` records it. The two differ
for images with an object the mask does not show (e.g. too small to segment).
Every JPEG is decoded at build time; a missing file or folder raises FileNotFoundError and an
undecodable image, an invalid mask or an image/mask size mismatch raises ValueError, each naming
the exact path(s), so a build either completes or leaves nothing behind (TFDS writes to a
temporary directory that is renamed only on success).

`plan_source` resolves all of this once (which files each split reads, and their sizes);
the builder reads what it lists and `SourcePlan.fingerprint` hashes it, so a build can be bound
to the exact source it came from (`datasets.prepare`).

Features: ``id`` (Text), ``image`` (the original JPEG bytes), ``mask`` (single-channel index PNG
bytes, mode 'L', shape (H, W, 1) -- never a palette PNG, which TFDS+OpenCV would decode as RGB),
``labels`` (float32[20]).
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import stat
from pathlib import Path
from typing import ClassVar
from xml.etree import ElementTree

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
# Where a build's image labels came from (`SourcePlan.labels_from`), as `source.json` says it.
LABEL_SOURCES = {
    "xml": "Annotations/<id>.xml (every object with a non-empty box)",
    "masks": "the classes present in the segmentation masks (no Annotations/ folder)",
}


MANUAL_DIR_HINT = "the folder holding VOCdevkit/, VOCdevkit/ itself, or its VOC2012/ folder"


def find_voc_root(manual_dir: str | os.PathLike) -> Path:
    """The VOC2012 folder under `manual_dir` (see module docstring); FileNotFoundError listing
    every place tried when none holds ``JPEGImages/``."""
    base = Path(manual_dir)
    candidates = [base / "VOCdevkit" / "VOC2012", base / "VOC2012", base]
    for cand in candidates:
        if (cand / "JPEGImages").is_dir():
            return cand
    tried = ", ".join(repr(str(c / "JPEGImages")) for c in candidates)
    raise FileNotFoundError(
        f"No VOC2012 folder found under manual_dir={str(base)!r}: tried {tried}. Point "
        "manual_dir at the folder holding VOCdevkit/, at VOCdevkit/ itself, or at VOC2012/."
    )


find_root = find_voc_root  # the name `datasets` calls for every manual-source dataset


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
    return _parse_id_list(_require_file(path).read_bytes(), path)


def _parse_id_list(data: bytes, path: Path) -> list[str]:
    ids = []
    for line in data.decode("utf-8").splitlines():
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


def _xml_int(node, tag: str, path: Path) -> int:
    """An integer field of a VOC XML node: the text before any '.' (the reference's reading)."""
    field = node.find(tag) if node is not None else None
    if field is None or field.text is None:
        raise ValueError(f"VOC annotation {str(path)!r}: <{tag}> missing")
    try:
        return int(field.text.strip().split(".")[0])
    except ValueError:
        raise ValueError(f"VOC annotation {str(path)!r}: <{tag}> is {field.text!r}") from None


def read_xml_labels(path: Path) -> np.ndarray:
    """float32[20] multi-hot of the objects of a VOC ``Annotations/<id>.xml`` (method.md §11).

    Every ``<object>`` counts (difficult and truncated too) unless its box is empty: corners
    truncated to integers and clipped to [0, width - 1] x [0, height - 1] (``<size>``), then
    skipped when xmax == xmin or ymax == ymin. Raises ValueError naming the file for an
    unreadable XML, a missing field or a class name outside VOC's 20.
    """
    try:
        root = ElementTree.parse(_require_file(path)).getroot()
    except ElementTree.ParseError as e:
        raise ValueError(f"VOC annotation {str(path)!r} is not valid XML: {e}") from None
    size = root.find("size")
    width, height = _xml_int(size, "width", path), _xml_int(size, "height", path)
    labels = np.zeros(NUM_CLASSES, np.float32)
    for obj in root.findall("object"):
        name_node = obj.find("name")
        name = (name_node.text or "").strip() if name_node is not None else ""
        if name not in CLASS_NAMES:
            raise ValueError(
                f"VOC annotation {str(path)!r} names an object {name!r}, not one of the 20 "
                f"classes {list(CLASS_NAMES)}"
            )
        box = obj.find("bndbox")
        x0, x1 = (min(max(_xml_int(box, t, path), 0), width - 1) for t in ("xmin", "xmax"))
        y0, y1 = (min(max(_xml_int(box, t, path), 0), height - 1) for t in ("ymin", "ymax"))
        if x1 != x0 and y1 != y0:
            labels[CLASS_NAMES.index(name)] = 1.0
    return labels


def mask_labels(mask: np.ndarray) -> np.ndarray:
    """float32[20] multi-hot of the classes 1..20 present in an index mask."""
    present = np.unique(mask)
    present = present[(present >= 1) & (present <= NUM_CLASSES)].astype(np.int64)
    labels = np.zeros(NUM_CLASSES, np.float32)
    labels[present - 1] = 1.0
    return labels


def read_jpeg(path: Path) -> tuple[bytes, tuple[int, int]]:
    """Original JPEG bytes and (H, W), after checking the file decodes; ValueError if not."""
    data = _require_file(path).read_bytes()
    if not data:
        raise ValueError(f"Empty VOC image file (0 bytes): {str(path)!r}")
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if image is None:
        raise ValueError(f"Corrupted or undecodable VOC image: {str(path)!r}")
    return data, image.shape[:2]


@dataclasses.dataclass(frozen=True)
class SplitPlan:
    """One split: its ids, the list file they came from, and each id's mask (relative to ROOT)."""

    ids: tuple[str, ...]
    list_file: Path
    list_sha256: str  # of the list file's bytes
    masks: tuple[str, ...]  # "SegmentationClass/<id>.png" or "SegmentationClassAug/<id>.png"


@dataclasses.dataclass(frozen=True)
class SourcePlan:
    """What a build of `root` reads: every split and the byte size of every listed file.

    `sizes` maps paths relative to `root` ("JPEGImages/<id>.jpg", masks) to bytes (os.stat).
    """

    root: Path
    splits: dict[str, SplitPlan]
    sizes: dict[str, int]
    labels_from: str = "masks"  # "xml": Annotations/<id>.xml; "masks": the classes in the mask

    def examples(self, split: str) -> list[tuple[str, Path, Path, Path | None]]:
        """(id, image, mask, annotation XML or None) of `split`, in list order."""
        plan = self.splits[split]
        xml = self.labels_from == "xml"
        return [
            (
                i,
                self.root / "JPEGImages" / f"{i}.jpg",
                self.root / m,
                self.root / "Annotations" / f"{i}.xml" if xml else None,
            )
            for i, m in zip(plan.ids, plan.masks, strict=True)
        ]

    def record(self) -> dict:
        """What `source.json` says about this source besides its identity."""
        return {
            "root": str(self.root.resolve()),
            "splits": {s: len(p.ids) for s, p in self.splits.items()},
            "lists": {s: str(p.list_file.resolve()) for s, p in self.splits.items()},
            "labels": LABEL_SOURCES[self.labels_from],
        }

    def fingerprint(self) -> str:
        """16 hex digits of SHA-256 over the resolved root, each split's list file (path and
        contents), where the labels come from and the size of every listed image, mask and
        annotation. Same source -> same value wherever it is built; another list or a file of
        another size -> another value."""
        h = hashlib.sha256()
        h.update(f"root\t{self.root.resolve()}\n".encode())
        h.update(f"labels\t{self.labels_from}\n".encode())
        for name in sorted(self.splits):
            split = self.splits[name]
            h.update(f"split\t{name}\t{split.list_file.resolve()}\t{split.list_sha256}\n".encode())
        h.update("".join(f"{rel}\t{self.sizes[rel]}\n" for rel in sorted(self.sizes)).encode())
        return h.hexdigest()[:16]


def _file_size(path: str) -> int | None:
    """Bytes of the regular file `path`, or None when it is missing (one os.stat)."""
    try:
        st = os.stat(path)
    except (FileNotFoundError, NotADirectoryError):
        return None
    return st.st_size if stat.S_ISREG(st.st_mode) else None


def plan_source(manual_dir: str | os.PathLike) -> SourcePlan:
    """Resolves the VOC2012 folder, its split lists and every listed file, without decoding.

    Cost: one os.stat per distinct listed file (~25k for VOC + SBD train_aug). Raises
    FileNotFoundError naming the first missing folder, list, image or mask (so nothing is
    written for a broken devkit) and ValueError for an empty list.
    """
    manual = Path(manual_dir)
    root = find_voc_root(manual)
    for sub in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        _require_dir(root / sub)
    lists = root / "ImageSets" / "Segmentation"
    prefix = str(root) + os.sep
    sizes: dict[str, int | None] = {}

    def size(rel: str) -> int | None:
        if rel not in sizes:
            sizes[rel] = _file_size(prefix + rel)
        return sizes[rel]

    def split_plan(list_file: Path, aug: bool) -> SplitPlan:
        data = _require_file(list_file).read_bytes()
        ids = tuple(_parse_id_list(data, list_file))
        masks = []
        for i in ids:
            mask = f"SegmentationClass/{i}.png"
            if aug:
                mask = f"SegmentationClassAug/{i}.png"
                if size(mask) is None and size(f"SegmentationClass/{i}.png") is not None:
                    mask = f"SegmentationClass/{i}.png"
                if size(mask) is None:
                    raise FileNotFoundError(
                        f"Expected VOC mask not found: {prefix + mask!r} "
                        f"(nor {prefix + f'SegmentationClass/{i}.png'!r})"
                    )
            for rel in (f"JPEGImages/{i}.jpg", mask):
                if size(rel) is None:
                    raise FileNotFoundError(f"Expected VOC file not found: {prefix + rel!r}")
            masks.append(mask)
        return SplitPlan(ids, list_file, hashlib.sha256(data).hexdigest(), tuple(masks))

    splits = {split: split_plan(lists / f"{split}.txt", aug=False) for split in ("train", "val")}
    aug_list = find_train_aug(root, manual)
    if aug_list is not None:
        splits["train_aug"] = split_plan(aug_list, aug=True)
    labels_from = "xml" if (root / "Annotations").is_dir() else "masks"
    if labels_from == "xml":
        for split in splits.values():
            for i in split.ids:
                if size(f"Annotations/{i}.xml") is None:
                    raise FileNotFoundError(
                        f"Expected VOC annotation not found: {prefix + f'Annotations/{i}.xml'!r} "
                        f"(image labels come from {prefix + 'Annotations'!r} when it exists; "
                        "every listed image needs its XML)"
                    )
    return SourcePlan(root, splits, {k: v for k, v in sizes.items() if v is not None}, labels_from)


class PnocVoc2012(SegmentationBuilder):
    """PASCAL VOC 2012 segmentation (+ optional SBD train_aug) from a local VOCdevkit."""

    name = "pnoc_voc2012"
    VERSION = tfds.core.Version("1.1.0")
    RELEASE_NOTES: ClassVar[dict[str, str]] = {
        "1.0.0": "Initial release.",
        "1.1.0": "Image labels from Annotations/<id>.xml when the folder exists (method.md §11).",
    }
    MANUAL_DOWNLOAD_INSTRUCTIONS = (
        "Point manual_dir at a folder containing VOCdevkit/VOC2012/ (or at the VOC2012 folder "
        "itself) with JPEGImages/, SegmentationClass/ and ImageSets/Segmentation/{train,val}.txt; "
        "optionally SegmentationClassAug/ plus a train_aug.txt list for the train_aug split."
    )

    NUM_CLASSES = NUM_CLASSES
    IMAGE_FORMAT = "jpeg"
    DESCRIPTION = (
        "PASCAL VOC 2012 segmentation with image-level labels from Annotations/<id>.xml (or, "
        "without Annotations/, from the masks)."
    )
    HOMEPAGE = "http://host.robots.ox.ac.uk/pascal/VOC/voc2012/"

    def _split_generators(self, dl_manager):
        plan = plan_source(os.fspath(dl_manager.manual_dir))
        return {split: self._generate_examples(plan.examples(split)) for split in plan.splits}

    def _generate_examples(self, examples: list[tuple[str, Path, Path, Path | None]]):
        for ex_id, image_path, mask_path, xml_path in examples:
            data, (h, w) = read_jpeg(image_path)
            mask = read_mask(mask_path)
            if mask.shape != (h, w):
                raise ValueError(
                    f"Mask {str(mask_path)!r} has size {mask.shape} but image "
                    f"{str(image_path)!r} has size {(h, w)}."
                )
            labels = mask_labels(mask) if xml_path is None else read_xml_labels(xml_path)
            yield (
                ex_id,
                {
                    "id": ex_id,
                    "image": data,
                    "mask": fileio.encode_png(mask),
                    "labels": labels,
                },
            )
