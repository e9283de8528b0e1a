"""COCO 2014: rasterisation against pycocotools, the builder on a fixture in the real format.

pycocotools is the oracle (`pip install pycocotools`); the package itself does not use it.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest

from pnoc_jax.data import datasets
from pnoc_jax.data.builders import coco2014, coco_masks
from tests.data.coco_fixture import (
    CAT,
    CATEGORY_IDS,
    CATEGORY_NAMES,
    CATEGORY_SUPERCATEGORIES,
    CUP,
    DOG,
    IMAGE_IDS,
    PERSON,
    SPECIAL,
    TABLE,
    TOOTHBRUSH,
    write_coco,
)

# pycocotools under NumPy 2 warns about its own __array__; not ours to fix.
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")


@pytest.fixture(autouse=True)
def _fresh_identities():
    datasets.clear_identity_cache()
    yield
    datasets.clear_identity_cache()


@pytest.fixture(scope="module")
def mask_api():
    return pytest.importorskip("pycocotools.mask", reason="pycocotools is the oracle here")


# ---------------------------------------------------------------------------------------------
# Rasterisation


def _polygons(rng, n: int):
    """Random polygons: real-valued, integer, half-pixel vertices, out-of-image and repeated
    vertices, on images from 1 x 1 to 70 x 90."""
    for trial in range(n):
        h, w = (int(v) for v in rng.integers(1, [70, 90]))
        k = int(rng.integers(3, 14))
        kind = trial % 4
        if kind == 0:
            xy = rng.uniform(-4, [w + 4, h + 4], (k, 2))
        elif kind == 1:
            xy = rng.integers(0, [w + 1, h + 1], (k, 2)).astype(float)
        elif kind == 2:
            xy = np.round(rng.uniform(0, [w, h], (k, 2)) * 2) / 2
        else:
            xy = rng.uniform(0, [w, h], (k, 2))
            xy[1] = xy[0]
        yield h, w, xy.ravel().tolist()


def test_polygons_match_pycocotools_exactly(mask_api):
    rng = np.random.default_rng(0)
    for h, w, xy in _polygons(rng, 1500):
        expected = mask_api.decode(mask_api.frPyObjects([xy], h, w)[0]).astype(bool)
        np.testing.assert_array_equal(coco_masks.polygon_mask(xy, h, w), expected, err_msg=xy)


def test_annotation_forms_match_the_coco_api(mask_api):
    """Several parts (union), [x, y, w, h] boxes (a first part of 4 numbers), uncompressed and
    compressed RLE, as the COCO API's annToMask reads them."""
    rng = np.random.default_rng(1)
    h, w = 37, 53
    parts = [next(_polygons(rng, 1))[2] for _ in range(3)]
    parts = [[min(max(v, 0), 40) for v in p] for p in parts]
    boxes = [[3.5, 4, 20, 11.2], [30, 2, 5, 30]]
    for segmentation in (parts, boxes):
        # (pycocotools 2.0.11 takes boxes only as an array; older versions took the list.)
        arg = np.array(segmentation) if segmentation is boxes else segmentation
        expected = mask_api.decode(mask_api.merge(mask_api.frPyObjects(arg, h, w))).astype(bool)
        np.testing.assert_array_equal(coco_masks.annotation_mask(segmentation, h, w), expected)
    for _ in range(50):
        m = rng.random((h, w)) < rng.random()
        m[rng.integers(0, h), :] = True
        rle = mask_api.encode(np.asfortranarray(m.astype(np.uint8)))
        compressed = {"counts": rle["counts"].decode(), "size": [h, w]}
        np.testing.assert_array_equal(coco_masks.annotation_mask(compressed, h, w), m)
        counts = coco_masks.decode_counts(rle["counts"])
        assert sum(counts) == h * w
        np.testing.assert_array_equal(
            coco_masks.annotation_mask({"counts": counts, "size": [h, w]}, h, w), m
        )


def test_bad_segmentations_are_refused():
    with pytest.raises(ValueError, match=r"RLE size \[4, 5\] differs from the image's \[5, 4\]"):
        coco_masks.annotation_mask({"counts": [20], "size": [4, 5]}, 5, 4)
    with pytest.raises(ValueError, match="sum to 19, not h \\* w"):
        coco_masks.annotation_mask({"counts": [10, 9], "size": [5, 4]}, 5, 4)
    with pytest.raises(ValueError, match="even number"):
        coco_masks.annotation_mask([[1, 2, 3, 4, 5, 6, 7]], 5, 4)
    with pytest.raises(ValueError, match=re.escape("outside '0'..'o'")):
        coco_masks.decode_counts("0~")
    assert not coco_masks.annotation_mask([], 3, 3).any()


# ---------------------------------------------------------------------------------------------
# The builder


def _oracle(annotations: list[dict], h: int, w: int, mask_api) -> tuple[np.ndarray, set[int]]:
    """The documented composition, from pycocotools masks: non-empty annotations label the
    image; crowd 255; instances larger first, so the smaller wins."""
    index = {cid: i for i, cid in enumerate(CATEGORY_IDS, start=1)}
    out = np.zeros((h, w), np.uint8)
    labels, instances = set(), []
    for ann in annotations:
        seg = ann["segmentation"]
        if isinstance(seg, list):
            rle = mask_api.merge(mask_api.frPyObjects(seg, h, w))
        elif isinstance(seg["counts"], list):
            rle = mask_api.frPyObjects(seg, h, w)
        else:
            rle = seg
        m = mask_api.decode(rle).astype(bool)
        if not m.any():
            continue
        labels.add(index[ann["category_id"]])
        if ann["iscrowd"]:
            out[m] = 255
        else:
            instances.append((-int(m.sum()), ann["id"], index[ann["category_id"]], m))
    for *_, cls, m in sorted(instances, key=lambda r: r[:2]):
        out[m] = cls
    return out, labels


@pytest.fixture(scope="module")
def coco_build(tmp_path_factory):
    root = write_coco(tmp_path_factory.mktemp("coco") / "coco2014")
    data_dir = str(tmp_path_factory.mktemp("tfds"))
    splits = {s: datasets.load_split("coco2014", s, data_dir, str(root)) for s in IMAGE_IDS}
    return root, data_dir, splits


def test_info():
    info = datasets.get_info("coco2014")
    assert info.num_classes == 80 and info.splits == ("train", "val")
    assert info.class_names == CATEGORY_NAMES  # category-id order
    assert info.class_names[0] == "person" and info.class_names[79] == "toothbrush"


def test_supercategories_are_the_annotation_files():
    by_class = {n: s for s, names in coco2014.SUPERCATEGORIES.items() for n in names}
    assert tuple(by_class[n] for n in CATEGORY_NAMES) == CATEGORY_SUPERCATEGORIES
    categories = [
        {"supercategory": s, "id": i, "name": n}
        for i, n, s in zip(CATEGORY_IDS, CATEGORY_NAMES, CATEGORY_SUPERCATEGORIES, strict=True)
    ]
    assert coco2014.category_index(categories, Path("a.json"))[CATEGORY_IDS[-1]] == 80
    categories[3] = {**categories[3], "supercategory": "animal"}
    with pytest.raises(ValueError, match=r"a\.json.*'motorcycle'.*SUPERCATEGORIES"):
        coco2014.category_index(categories, Path("a.json"))


def test_builder_masks_labels_and_images(coco_build, mask_api):
    root, _, splits = coco_build
    for split, source in splits.items():
        data = json.loads((root / "annotations" / f"instances_{split}2014.json").read_text())
        by_image = {im["id"]: [] for im in data["images"]}
        for ann in data["annotations"]:
            by_image[ann["image_id"]].append(ann)
        examples = [source[i] for i in range(len(source))]
        assert sorted(e["id"] for e in examples) == [f"{i:012d}" for i in sorted(IMAGE_IDS[split])]
        for ex in examples:
            info = next(im for im in data["images"] if f"{im['id']:012d}" == ex["id"])
            h, w = info["height"], info["width"]
            assert ex["image"].shape == (h, w, 3) and ex["mask"].shape == (h, w)
            decoded = cv2.imread(str(root / f"{split}2014" / info["file_name"]))[..., ::-1]
            np.testing.assert_array_equal(ex["image"], decoded)
            expected, labels = _oracle(by_image[info["id"]], h, w, mask_api)
            np.testing.assert_array_equal(ex["mask"], expected, err_msg=ex["id"])
            assert set(np.flatnonzero(ex["labels"]) + 1) == labels, ex["id"]


def _example(coco_build, name: str) -> dict:
    split, image_id = SPECIAL[name]
    source = coco_build[2][split]
    return next(e for e in (source[i] for i in range(len(source))) if e["id"] == f"{image_id:012d}")


def _index(category_id: int) -> int:
    return CATEGORY_IDS.index(category_id) + 1


def test_the_special_cases(coco_build):
    overlap = _example(coco_build, "overlap")
    assert overlap["mask"][17, 16] == _index(CUP)  # the cup lies on the table: it wins
    assert overlap["mask"][30, 8] == _index(TABLE) == 61
    crowd = _example(coco_build, "crowd")
    assert crowd["mask"][20, 8] == 255  # crowd person, no instance: ignored
    mid = crowd["mask"].shape[1] // 2 + 2
    assert crowd["mask"][20, mid] == _index(DOG)  # an instance over a crowd region wins
    assert crowd["labels"][_index(PERSON) - 1] == 1  # a crowd class is present
    compressed = _example(coco_build, "compressed")
    assert compressed["mask"][5, 6] == _index(CAT) and compressed["mask"][10, 12] == 0  # hole
    assert compressed["mask"][28, 35] == compressed["mask"][34, 5] == _index(PERSON)  # 2 parts
    for name in ("empty", "val_empty"):
        empty = _example(coco_build, name)
        assert not empty["mask"].any() and not empty["labels"].any()
    degenerate = _example(coco_build, "degenerate")
    assert not degenerate["labels"][_index(TOOTHBRUSH) - 1]  # no pixel: not a label
    assert degenerate["labels"][_index(CAT) - 1]
    grey = _example(coco_build, "grey")
    assert grey["image"].shape[2] == 3
    np.testing.assert_array_equal(grey["image"][..., 0], grey["image"][..., 2])


def test_identity_and_manual_dir_forms(coco_build, tmp_path):
    root, data_dir, _ = coco_build
    fp = datasets.source_fingerprint("coco2014", str(root))
    assert datasets.source_fingerprint("coco2014", str(root.parent)) == fp  # <dir>/coco2014
    record = json.loads(
        (Path(datasets.build_path("coco2014", data_dir, fp)) / "source.json").read_text()
    )
    assert record["examples"] == {"train": 10, "val": 4}
    assert record["labels"] == coco2014.LABEL_SOURCE
    copy = tmp_path / "copy"
    shutil.copytree(root, copy)
    assert datasets.source_fingerprint("coco2014", str(copy)) != fp  # another folder
    ann = copy / "annotations" / "instances_val2014.json"
    before = datasets.source_fingerprint("coco2014", str(copy))
    ann.write_text(ann.read_text().replace('"iscrowd": 0', '"iscrowd": 0 '))  # same data, new bytes
    assert datasets.source_fingerprint("coco2014", str(copy)) != before


def test_val_only_download_and_layout_errors(tmp_path):
    root = write_coco(tmp_path / "coco")
    shutil.rmtree(root / "train2014")
    (root / "annotations" / "instances_train2014.json").unlink()
    assert coco2014.plan_source(root).splits == ("val",)
    with pytest.raises(ValueError, match="no split 'train'"):
        datasets.load_split("coco2014", "train", str(tmp_path / "tfds"), str(root))
    (root / "annotations" / "instances_val2014.json").unlink()
    with pytest.raises(FileNotFoundError, match=re.escape("instances_val2014.json")):
        coco2014.plan_source(root)
    with pytest.raises(FileNotFoundError, match="No COCO 2014 folder"):
        coco2014.plan_source(tmp_path / "nothing")


@pytest.mark.parametrize("fault", ["size", "missing image", "unknown image", "category", "rle"])
def test_bad_sources_name_the_file_and_leave_nothing(tmp_path, fault):
    root = write_coco(tmp_path / "coco")
    ann_file = root / "annotations" / "instances_train2014.json"
    data = json.loads(ann_file.read_text())
    image = data["images"][1]
    if fault == "size":
        image["height"] += 1
        expect = re.escape(image["file_name"]) + ".* says"
    elif fault == "missing image":
        (root / "train2014" / image["file_name"]).unlink()
        expect = "not found: .*" + re.escape(image["file_name"])
    elif fault == "unknown image":
        data["annotations"][0]["image_id"] = 999
        expect = f"annotation {data['annotations'][0]['id']} belongs to image 999"
    elif fault == "category":
        data["annotations"][0]["category_id"] = 12  # a gap in COCO's ids
        expect = "unknown category_id 12"
    else:
        crowd = next(a for a in data["annotations"] if a["iscrowd"])
        crowd["segmentation"]["size"] = [3, 3]
        expect = f"annotation {crowd['id']}: RLE size \\[3, 3\\]"
    ann_file.write_text(json.dumps(data))
    data_dir = tmp_path / "tfds"
    with pytest.raises((ValueError, FileNotFoundError), match=expect) as err:
        datasets.prepare("coco2014", str(data_dir), str(root))
    if fault != "missing image":
        assert "instances_train2014.json" in str(err.value)
    assert datasets.list_builds("coco2014", str(data_dir)) == []
