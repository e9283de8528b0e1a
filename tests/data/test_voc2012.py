"""VOC 2012 TFDS builder on a tiny VOCdevkit fixture written in the real layout."""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from pnoc_jax.core.masks import PALETTE
from pnoc_jax.data import datasets
from pnoc_jax.data.builders.voc2012 import CLASS_NAMES

# id -> (height, width, [(class index, (y0, x0, y1, x1)), ...])
_SPECS = {
    "2007_000032": (40, 56, [(1, (5, 5, 20, 30)), (15, (22, 30, 38, 54))]),
    "2007_000039": (48, 36, [(20, (10, 4, 40, 30))]),
    "2007_000063": (32, 44, [(8, (2, 2, 30, 20)), (12, (4, 24, 28, 42))]),
    "2008_000002": (36, 36, [(3, (6, 6, 30, 30))]),
    "2008_000003": (44, 50, [(15, (0, 0, 44, 25)), (13, (10, 26, 40, 50))]),
}
_TRAIN = ["2007_000032", "2007_000039", "2008_000002"]
_VAL = ["2007_000063", "2008_000003"]


def _mask(h: int, w: int, objects) -> np.ndarray:
    """Index mask with a 255 border around every object, as in VOC."""
    mask = np.zeros((h, w), np.uint8)
    for cls, (y0, x0, y1, x1) in objects:
        mask[max(0, y0 - 1) : y1 + 1, max(0, x0 - 1) : x1 + 1] = 255
        mask[y0:y1, x0:x1] = cls
    return mask


def _image(h: int, w: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    base = np.stack([xx * 255 // max(1, w - 1), yy * 255 // max(1, h - 1), 0 * xx + 90], -1)
    return np.clip(base + rng.integers(-4, 5, (h, w, 3)), 0, 255).astype(np.uint8)


def _save_palette_png(mask: np.ndarray, path: Path) -> None:
    im = Image.fromarray(mask, mode="P")
    im.putpalette(PALETTE.reshape(-1).tolist())
    im.save(path)


def _write_voc(root: Path, with_aug: bool = False) -> Path:
    """Write <root>/VOCdevkit/VOC2012 and return the VOC2012 folder."""
    voc = root / "VOCdevkit" / "VOC2012"
    for sub in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        (voc / sub).mkdir(parents=True, exist_ok=True)
    for k, (ex_id, (h, w, objects)) in enumerate(_SPECS.items()):
        rgb = _image(h, w, k)
        if k % 2:
            cv2.imwrite(str(voc / "JPEGImages" / f"{ex_id}.jpg"), rgb[..., ::-1])
        else:
            Image.fromarray(rgb).save(voc / "JPEGImages" / f"{ex_id}.jpg", quality=90)
        _save_palette_png(_mask(h, w, objects), voc / "SegmentationClass" / f"{ex_id}.png")
    lists = voc / "ImageSets" / "Segmentation"
    (lists / "train.txt").write_text("\n".join(_TRAIN) + "\n")
    (lists / "val.txt").write_text("\n".join(_VAL) + "\n")
    if with_aug:
        aug = voc / "SegmentationClassAug"
        aug.mkdir()
        # SBD-style grey ('L') masks for two ids, with a different label; the third falls back.
        for ex_id in ("2007_000032", "2007_000039"):
            h, w, _ = _SPECS[ex_id]
            Image.fromarray(_mask(h, w, [(7, (4, 4, 20, 20))]), mode="L").save(aug / f"{ex_id}.png")
        (lists / "train_aug.txt").write_text(
            "/JPEGImages/2007_000032.jpg /SegmentationClassAug/2007_000032.png\n"
            "2007_000039\n2008_000002\n"
        )
    return voc


def _expected_labels(ex_id: str) -> np.ndarray:
    labels = np.zeros(len(CLASS_NAMES), np.float32)
    for cls, _ in _SPECS[ex_id][2]:
        labels[cls - 1] = 1
    return labels


def _by_id(source) -> dict[str, dict]:
    return {ex["id"]: ex for ex in (source[i] for i in range(len(source)))}


def test_get_info_voc_and_unknown():
    info = datasets.get_info("voc2012")
    assert info.num_classes == 20 and info.class_names[0] == "aeroplane"
    assert info.class_names[-1] == "tvmonitor" and info.ignore_index == 255
    with pytest.raises(ValueError, match="synthetic"):
        datasets.get_info("coco")


def test_build_and_read_voc(tmp_path):
    voc = _write_voc(tmp_path / "manual")
    data_dir = str(tmp_path / "tfds")
    train = _by_id(datasets.load_split("voc2012", "train", data_dir, str(tmp_path / "manual")))
    val = _by_id(datasets.load_split("voc2012", "val", data_dir))  # built: no manual_dir needed
    assert sorted(train) == sorted(_TRAIN) and sorted(val) == sorted(_VAL)
    for ex_id, ex in {**train, **val}.items():
        h, w, objects = _SPECS[ex_id]
        assert isinstance(ex["id"], str)
        assert ex["image"].shape == (h, w, 3) and ex["image"].dtype == np.uint8
        assert ex["mask"].shape == (h, w) and ex["mask"].dtype == np.uint8
        assert ex["labels"].dtype == np.float32
        np.testing.assert_array_equal(ex["labels"], _expected_labels(ex_id))
        # Indices preserved (a palette PNG decoded by OpenCV would give colour triplets).
        np.testing.assert_array_equal(ex["mask"], _mask(h, w, objects))
        ref = cv2.imread(str(voc / "JPEGImages" / f"{ex_id}.jpg"))[..., ::-1]
        np.testing.assert_array_equal(ex["image"], ref)
        assert np.abs(ex["image"].astype(int) - _image(h, w, list(_SPECS).index(ex_id))).mean() < 10
    with pytest.raises(ValueError, match="train_aug"):
        datasets.load_split("voc2012", "train_aug", data_dir)
    # Idempotent: a second prepare does not rebuild or fail.
    datasets.prepare("voc2012", data_dir, str(tmp_path / "manual"))
    assert len(datasets.load_split("voc2012", "train", data_dir, shard_by_process=True)) == 3


def test_voc_root_layout_and_train_aug(tmp_path):
    voc = _write_voc(tmp_path / "manual", with_aug=True)
    data_dir = str(tmp_path / "tfds")
    aug = _by_id(datasets.load_split("voc2012", "train_aug", data_dir, str(voc)))  # VOC2012 itself
    assert sorted(aug) == sorted(["2007_000032", "2007_000039", "2008_000002"])
    expected_aug = np.zeros(20, np.float32)
    expected_aug[6] = 1
    np.testing.assert_array_equal(aug["2007_000032"]["labels"], expected_aug)
    assert set(np.unique(aug["2007_000039"]["mask"])) == {0, 7, 255}
    # Fallback to SegmentationClass for ids without an Aug mask.
    np.testing.assert_array_equal(aug["2008_000002"]["labels"], _expected_labels("2008_000002"))


def test_rgb_mask_converted_via_colormap(tmp_path):
    voc = _write_voc(tmp_path / "manual")
    ex_id = "2007_000032"
    h, w, objects = _SPECS[ex_id]
    rgb = PALETTE[_mask(h, w, objects)]
    Image.fromarray(rgb, mode="RGB").save(voc / "SegmentationClass" / f"{ex_id}.png")
    train = _by_id(datasets.load_split("voc2012", "train", str(tmp_path / "tfds"), str(voc)))
    np.testing.assert_array_equal(train[ex_id]["mask"], _mask(h, w, objects))


def _assert_not_built(data_dir: Path) -> None:
    version_dir = data_dir / "pnoc_voc2012" / "1.0.0"
    assert not version_dir.exists(), "a failed build must not leave a finished-looking dataset"


def test_corrupted_jpeg_names_file(tmp_path):
    voc = _write_voc(tmp_path / "manual")
    bad = voc / "JPEGImages" / "2007_000063.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 this is not really a jpeg" + os.urandom(64))
    with pytest.raises(ValueError, match=re.escape("2007_000063.jpg")):
        datasets.prepare("voc2012", str(tmp_path / "tfds"), str(tmp_path / "manual"))
    _assert_not_built(tmp_path / "tfds")
    # After fixing the file the build succeeds.
    shutil.copy(voc / "JPEGImages" / "2007_000032.jpg", bad)
    h, w, _ = _SPECS["2007_000032"]
    _save_palette_png(np.zeros((h, w), np.uint8), voc / "SegmentationClass" / "2007_000063.png")
    val = _by_id(datasets.load_split("voc2012", "val", str(tmp_path / "tfds"), str(voc)))
    assert val["2007_000063"]["labels"].sum() == 0


def test_missing_segmentation_folder_names_path(tmp_path):
    voc = _write_voc(tmp_path / "manual")
    shutil.rmtree(voc / "SegmentationClass")
    with pytest.raises(FileNotFoundError, match=re.escape(str(voc / "SegmentationClass"))):
        datasets.prepare("voc2012", str(tmp_path / "tfds"), str(tmp_path / "manual"))
    _assert_not_built(tmp_path / "tfds")


def test_missing_list_image_and_manual_dir(tmp_path):
    voc = _write_voc(tmp_path / "manual")
    data_dir = str(tmp_path / "tfds")
    with pytest.raises(FileNotFoundError, match="JPEGImages"):
        datasets.prepare("voc2012", data_dir, str(tmp_path / "nowhere"))
    with pytest.raises(ValueError, match="manual_dir"):
        datasets.prepare("voc2012", data_dir)
    (voc / "JPEGImages" / "2008_000003.jpg").unlink()
    with pytest.raises(FileNotFoundError, match=re.escape("2008_000003.jpg")):
        datasets.prepare("voc2012", data_dir, str(voc))
    val_list = voc / "ImageSets" / "Segmentation" / "val.txt"
    val_list.unlink()
    with pytest.raises(FileNotFoundError, match=re.escape(str(val_list))):
        datasets.prepare("voc2012", data_dir, str(voc))
    _assert_not_built(tmp_path / "tfds")


def test_mask_size_mismatch_names_both_files(tmp_path):
    voc = _write_voc(tmp_path / "manual")
    _save_palette_png(np.zeros((10, 10), np.uint8), voc / "SegmentationClass" / "2007_000039.png")
    with pytest.raises(ValueError, match=re.escape("2007_000039.png")) as err:
        datasets.prepare("voc2012", str(tmp_path / "tfds"), str(voc))
    assert "2007_000039.jpg" in str(err.value)
    _assert_not_built(tmp_path / "tfds")


def test_half_built_dataset_is_rebuilt(tmp_path):
    _write_voc(tmp_path / "manual")
    manual, data_dir = str(tmp_path / "manual"), tmp_path / "tfds"
    version_dir = data_dir / "pnoc_voc2012" / "1.0.0"
    version_dir.mkdir(parents=True)
    (version_dir / "pnoc_voc2012-train.array_record-00000-of-00001").write_bytes(b"partial")
    assert len(datasets.load_split("voc2012", "train", str(data_dir), manual)) == 3
    # A finished build that lost a record file is not considered complete either.
    (version_dir / "pnoc_voc2012-val.array_record-00000-of-00001").unlink()
    datasets.prepare("voc2012", str(data_dir), manual)
    assert len(datasets.load_split("voc2012", "val", str(data_dir))) == 2
