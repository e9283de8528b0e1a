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
from tests.conftest import one_error_line, run_main
from tests.data.voc_devkit import (
    SPECS,
    TRAIN,
    VAL,
    expected_labels,
    index_mask,
    rgb_image,
    save_palette_png,
    write_voc,
)


def _by_id(source) -> dict[str, dict]:
    return {ex["id"]: ex for ex in (source[i] for i in range(len(source)))}


def test_get_info_voc_and_unknown():
    info = datasets.get_info("voc2012")
    assert info.num_classes == 20 and info.class_names[0] == "aeroplane"
    assert info.class_names[-1] == "tvmonitor" and info.ignore_index == 255
    with pytest.raises(ValueError, match="synthetic"):
        datasets.get_info("coco")


def test_build_and_read_voc(tmp_path):
    voc = write_voc(tmp_path / "manual")
    data_dir = str(tmp_path / "tfds")
    train = _by_id(datasets.load_split("voc2012", "train", data_dir, str(tmp_path / "manual")))
    val = _by_id(datasets.load_split("voc2012", "val", data_dir))  # built: no manual_dir needed
    assert sorted(train) == sorted(TRAIN) and sorted(val) == sorted(VAL)
    for ex_id, ex in {**train, **val}.items():
        h, w, objects = SPECS[ex_id]
        assert isinstance(ex["id"], str)
        assert ex["image"].shape == (h, w, 3) and ex["image"].dtype == np.uint8
        assert ex["mask"].shape == (h, w) and ex["mask"].dtype == np.uint8
        assert ex["labels"].dtype == np.float32
        np.testing.assert_array_equal(ex["labels"], expected_labels(ex_id))
        # Indices preserved (a palette PNG decoded by OpenCV would give colour triplets).
        np.testing.assert_array_equal(ex["mask"], index_mask(h, w, objects))
        ref = cv2.imread(str(voc / "JPEGImages" / f"{ex_id}.jpg"))[..., ::-1]
        np.testing.assert_array_equal(ex["image"], ref)
        drawn = rgb_image(h, w, list(SPECS).index(ex_id))
        assert np.abs(ex["image"].astype(int) - drawn).mean() < 10
    with pytest.raises(ValueError, match="no split 'train_aug'") as err:
        datasets.load_split("voc2012", "train_aug", data_dir)
    fix = "your VOCdevkit has no SBD train_aug; use configs/pnoc_voc.py:train_split=train"
    assert fix in str(err.value)
    # Idempotent: a second prepare does not rebuild or fail.
    datasets.prepare("voc2012", data_dir, str(tmp_path / "manual"))
    assert len(datasets.load_split("voc2012", "train", data_dir, shard_by_process=True)) == 3


def test_voc_root_layout_and_train_aug(tmp_path):
    voc = write_voc(tmp_path / "manual", with_aug=True)
    data_dir = str(tmp_path / "tfds")
    aug = _by_id(datasets.load_split("voc2012", "train_aug", data_dir, str(voc)))  # VOC2012 itself
    assert sorted(aug) == sorted(["2007_000032", "2007_000039", "2008_000002"])
    expected_aug = np.zeros(20, np.float32)
    expected_aug[6] = 1
    np.testing.assert_array_equal(aug["2007_000032"]["labels"], expected_aug)
    assert set(np.unique(aug["2007_000039"]["mask"])) == {0, 7, 255}
    # Fallback to SegmentationClass for ids without an Aug mask.
    np.testing.assert_array_equal(aug["2008_000002"]["labels"], expected_labels("2008_000002"))


def test_rgb_mask_converted_via_colormap(tmp_path):
    voc = write_voc(tmp_path / "manual")
    ex_id = "2007_000032"
    h, w, objects = SPECS[ex_id]
    rgb = PALETTE[index_mask(h, w, objects)]
    Image.fromarray(rgb, mode="RGB").save(voc / "SegmentationClass" / f"{ex_id}.png")
    train = _by_id(datasets.load_split("voc2012", "train", str(tmp_path / "tfds"), str(voc)))
    np.testing.assert_array_equal(train[ex_id]["mask"], index_mask(h, w, objects))


def _assert_not_built(data_dir: Path) -> None:
    """A failed build leaves neither a finished-looking dataset nor a build folder."""
    left = sorted(p.name for p in data_dir.glob("voc2012-*")) if data_dir.exists() else []
    assert not left, f"a failed build must leave nothing behind, found {left}"
    assert not (data_dir / "pnoc_voc2012").exists()


def test_corrupted_jpeg_names_file(tmp_path):
    voc = write_voc(tmp_path / "manual")
    bad = voc / "JPEGImages" / "2007_000063.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 this is not really a jpeg" + os.urandom(64))
    with pytest.raises(ValueError, match=re.escape("2007_000063.jpg")):
        datasets.prepare("voc2012", str(tmp_path / "tfds"), str(tmp_path / "manual"))
    _assert_not_built(tmp_path / "tfds")
    # After fixing the file the build succeeds.
    shutil.copy(voc / "JPEGImages" / "2007_000032.jpg", bad)
    h, w, _ = SPECS["2007_000032"]
    save_palette_png(np.zeros((h, w), np.uint8), voc / "SegmentationClass" / "2007_000063.png")
    val = _by_id(datasets.load_split("voc2012", "val", str(tmp_path / "tfds"), str(voc)))
    assert val["2007_000063"]["labels"].sum() == 0


def test_an_empty_jpeg_is_one_line_naming_the_file(tmp_path):
    """`python -m pnoc_jax.main` on a VOCdevkit with a 0-byte JPEG: exit 1, one line naming
    the file, nothing built."""
    voc = write_voc(tmp_path / "manual")
    jpeg = voc / "JPEGImages" / "2007_000063.jpg"
    jpeg.write_bytes(b"")
    result = run_main(
        "--workdir", str(tmp_path / "run"),
        "--config.data.name=voc2012",
        f"--config.data.data_dir={tmp_path / 'tfds'}",
        f"--config.data.manual_dir={tmp_path / 'manual'}",
        "--config.stages=('train_oc',)",
        "--config.model.allow_random_init=True",
    )  # fmt: skip
    assert result.returncode == 1, result.stderr[-3000:]
    line = one_error_line(result)
    assert f"Empty VOC image file (0 bytes): '{jpeg}'" in line and line.endswith(
        "fix or restore that file, then rerun (the dataset "
        "is built again from the files as they are then)"
    )
    _assert_not_built(tmp_path / "tfds")
    assert os.listdir(tmp_path / "run") == [".lock"]


@pytest.mark.parametrize("mistake", ["missing", "mis-sized"])
def test_a_bad_vocdevkit_file_is_one_line_naming_it(tmp_path, mistake):
    """A listed JPEG missing, a mask of another size than its image: a `SourceError` (one line
    on the command line, as the empty JPEG above) naming the files, nothing built."""
    voc = write_voc(tmp_path / "manual")
    if mistake == "missing":
        jpeg = voc / "JPEGImages" / "2008_000003.jpg"
        jpeg.unlink()
        expected = f"Expected VOC file not found: '{jpeg}'"
    else:
        mask = voc / "SegmentationClass" / "2007_000039.png"
        save_palette_png(np.zeros((10, 10), np.uint8), mask)
        expected = (
            f"Mask '{mask}' has size (10, 10) but image '{voc}/JPEGImages/2007_000039.jpg' "
            "has size (48, 36)"
        )
    with pytest.raises(datasets.SourceError) as err:
        datasets.prepare("voc2012", str(tmp_path / "tfds"), str(voc))
    message = str(err.value)
    assert expected in message and "\n" not in message and "fix or restore that file" in message
    _assert_not_built(tmp_path / "tfds")


def test_missing_segmentation_folder_names_path(tmp_path):
    voc = write_voc(tmp_path / "manual")
    shutil.rmtree(voc / "SegmentationClass")
    with pytest.raises(datasets.SourceError, match=re.escape(str(voc / "SegmentationClass"))):
        datasets.prepare("voc2012", str(tmp_path / "tfds"), str(tmp_path / "manual"))
    _assert_not_built(tmp_path / "tfds")


def test_missing_list_image_and_manual_dir(tmp_path):
    voc = write_voc(tmp_path / "manual")
    data_dir = str(tmp_path / "tfds")
    with pytest.raises(datasets.SourceError, match="JPEGImages"):
        datasets.prepare("voc2012", data_dir, str(tmp_path / "nowhere"))
    with pytest.raises(ValueError, match="manual_dir"):
        datasets.prepare("voc2012", data_dir)
    (voc / "JPEGImages" / "2008_000003.jpg").unlink()
    with pytest.raises(datasets.SourceError, match=re.escape("2008_000003.jpg")):
        datasets.prepare("voc2012", data_dir, str(voc))
    val_list = voc / "ImageSets" / "Segmentation" / "val.txt"
    val_list.unlink()
    with pytest.raises(datasets.SourceError, match=re.escape(str(val_list))):
        datasets.prepare("voc2012", data_dir, str(voc))
    _assert_not_built(tmp_path / "tfds")


def test_half_built_dataset_is_rebuilt(tmp_path):
    write_voc(tmp_path / "manual")
    manual, data_dir = str(tmp_path / "manual"), tmp_path / "tfds"
    build = Path(
        datasets.build_path(
            "voc2012", str(data_dir), datasets.source_fingerprint("voc2012", manual)
        )
    )
    version_dir = build / "pnoc_voc2012" / str(datasets._BUILDERS["voc2012"].VERSION)
    version_dir.mkdir(parents=True)
    (version_dir / "pnoc_voc2012-train.array_record-00000-of-00001").write_bytes(b"partial")
    assert len(datasets.load_split("voc2012", "train", str(data_dir), manual)) == 3
    assert (build / datasets.SOURCE_FILE).is_file()
    # A finished build that lost a record file is not considered complete either.
    (version_dir / "pnoc_voc2012-val.array_record-00000-of-00001").unlink()
    with pytest.raises(ValueError, match="no finished build"):
        datasets.load_split("voc2012", "val", str(data_dir))  # not trusted without manual_dir
    datasets.prepare("voc2012", str(data_dir), manual)
    assert len(datasets.load_split("voc2012", "val", str(data_dir))) == 2
    # A build whose source record is gone (interrupted after TFDS finished) is rebuilt too.
    (build / datasets.SOURCE_FILE).unlink()
    assert datasets.list_builds("voc2012", str(data_dir)) == []
    datasets.prepare("voc2012", str(data_dir), manual)
    assert [b.path for b in datasets.list_builds("voc2012", str(data_dir))] == [str(build)]
