"""Host augmentations (§2): resize, flip, colour jitter, RandAugment, normalise, crop/pad."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
from PIL import Image, ImageEnhance

from pnoc_jax.data import randaugment, transforms


def _example(h: int = 60, w: int = 90, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    mask = np.zeros((h, w), np.uint8)
    mask[10:40, 5:30] = 3
    mask[9, 5:30] = 255
    return {"id": "x", "image": image, "mask": mask, "labels": np.eye(6, dtype=np.float32)[2]}


def test_resize_long_side_range_and_mask_nearest():
    ex = _example()
    rng = np.random.default_rng(1)
    longs = set()
    for _ in range(60):
        image, mask = transforms.random_resize_long_side(ex["image"], ex["mask"], rng, 40, 50)
        assert image.dtype == np.uint8 and mask.dtype == np.uint8
        assert image.shape[:2] == mask.shape
        assert 40 <= max(image.shape[:2]) <= 50 and image.shape[1] >= image.shape[0]
        assert abs(image.shape[0] / image.shape[1] - 60 / 90) < 0.05
        assert set(np.unique(mask).tolist()) <= {0, 3, 255}  # nearest: no new values
        longs.add(max(image.shape[:2]))
    assert longs == set(range(40, 51))  # inclusive range, all values reachable
    image, mask = transforms.random_resize_long_side(ex["image"], None, rng, 180, 180)
    assert image.shape == (120, 180, 3) and mask is None
    expected = np.asarray(Image.fromarray(ex["image"]).resize((180, 120), Image.Resampling.BICUBIC))
    np.testing.assert_array_equal(image, expected)


def test_hflip_consistent():
    ex = _example()
    flipped = unflipped = 0
    rng = np.random.default_rng(0)
    for _ in range(40):
        image, mask = transforms.random_hflip(ex["image"], ex["mask"], rng)
        if np.array_equal(image, ex["image"][:, ::-1]):
            np.testing.assert_array_equal(mask, ex["mask"][:, ::-1])
            flipped += 1
        else:
            np.testing.assert_array_equal(image, ex["image"])
            np.testing.assert_array_equal(mask, ex["mask"])
            unflipped += 1
    assert flipped > 5 and unflipped > 5


def test_color_jitter_semantics_and_determinism():
    image = _example()["image"]
    out1 = transforms.color_jitter(image, np.random.default_rng(3))
    out2 = transforms.color_jitter(image, np.random.default_rng(3))
    assert out1.dtype == np.uint8 and out1.shape == image.shape
    np.testing.assert_array_equal(out1, out2)
    assert not np.array_equal(out1, image)
    # Brightness only: a PIL brightness blend with a factor in [0.7, 1.3].
    out = transforms.color_jitter(image, np.random.default_rng(5), 0.3, 0, 0, 0)
    rng = np.random.default_rng(5)
    rng.permutation(4)
    factor = rng.uniform(0.7, 1.3)
    expected = np.asarray(ImageEnhance.Brightness(Image.fromarray(image)).enhance(factor))
    np.testing.assert_array_equal(out, expected)
    # Hue only on a grey image changes nothing (no saturation).
    grey = np.full((8, 8, 3), 128, np.uint8)
    np.testing.assert_array_equal(
        transforms.color_jitter(grey, np.random.default_rng(0), 0, 0, 0, 0.1), grey
    )


def test_normalize_values():
    image = np.zeros((2, 2, 3), np.uint8)
    image[0, 0] = (255, 255, 255)
    image[1, 1] = (124, 116, 104)  # ~ ImageNet mean * 255
    out = transforms.normalize(image)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out[0, 1], -transforms.IMAGENET_MEAN / transforms.IMAGENET_STD)
    np.testing.assert_allclose(out[0, 0], (1 - transforms.IMAGENET_MEAN) / transforms.IMAGENET_STD)
    np.testing.assert_allclose(out[1, 1], 0, atol=0.01)


def test_crop_or_pad_fills():
    rng = np.random.default_rng(0)
    image = np.full((10, 30, 3), 7.0, np.float32)
    mask = np.ones((10, 30), np.uint8)
    out, out_mask = transforms.random_crop_or_pad(image, mask, rng, 16)
    assert out.shape == (16, 16, 3) and out.dtype == np.float32 and out_mask.shape == (16, 16)
    rows = np.where((out == 7.0).all(axis=(1, 2)))[0]
    assert len(rows) == 10 and rows.max() - rows.min() == 9  # 10 image rows pasted contiguously
    assert (out[(out != 7.0).any(axis=2)] == 0.0).all()  # padding with 0
    assert ((out_mask == 1) == (out == 7.0).all(axis=2)).all()
    assert (out_mask[out_mask != 1] == 255).all() and (out_mask == 255).sum() == 6 * 16
    # Larger in both directions: a pure crop of the original.
    big = np.arange(40 * 50 * 3, dtype=np.float32).reshape(40, 50, 3)
    crop, none = transforms.random_crop_or_pad(big, None, rng, 16)
    assert none is None
    y, x = np.argwhere(big[..., 0] == crop[0, 0, 0])[0]
    np.testing.assert_array_equal(crop, big[y : y + 16, x : x + 16])
    offsets = {
        tuple(np.argwhere(transforms.random_crop_or_pad(image, mask, rng, 16)[1] == 1)[0])
        for _ in range(30)
    }
    assert len(offsets) > 3  # random paste offsets


def test_cutout_box_size_and_clipping():
    rng = np.random.default_rng(0)
    image = np.full((64, 64, 3), 200, np.uint8)
    full = 0
    for _ in range(200):
        out = randaugment.cutout_abs(image, 16, rng)
        black = (out == 0).all(axis=2)
        ys, xs = np.nonzero(black)
        h, w = ys.max() - ys.min() + 1, xs.max() - xs.min() + 1
        assert black.sum() == h * w and 8 <= h <= 16 and 8 <= w <= 16  # a (clipped) box
        full += h == 16 and w == 16
    assert full > 100  # mostly a full 16x16 box; only clipped at the image border


def test_randaugment_always_cutout_and_deterministic():
    image = _example(48, 64, 1)["image"]
    aug = randaugment.RandAugmentMC(n=2, m=10)
    for seed in range(40):
        out = aug(image, np.random.default_rng(seed))
        assert out.shape == image.shape and out.dtype == np.uint8
        np.testing.assert_array_equal(out, aug(image, np.random.default_rng(seed)))
        # Replay the same stream: ops first, then the cutout box is drawn last.
        rng = np.random.default_rng(seed)
        ops_only = aug.apply_ops(image, rng)
        y0, x0, y1, x1 = randaugment.cutout_box(48, 64, 16, rng)
        assert (out[y0:y1, x0:x1] == 0).all()
        outside = np.ones((48, 64), bool)
        outside[y0:y1, x0:x1] = False
        np.testing.assert_array_equal(out[outside], ops_only[outside])
        if 8 <= (y0 + y1) / 2 <= 40 and 8 <= (x0 + x1) / 2 <= 56:
            assert (y1 - y0, x1 - x0) == (16, 16)
    changed = sum(
        not np.array_equal(aug.apply_ops(image, np.random.default_rng(s)), image) for s in range(40)
    )
    assert changed > 20


def test_randaugment_each_op_runs():
    image = _example(32, 40, 2)["image"]
    img = Image.fromarray(image)
    rng = np.random.default_rng(0)
    for op, max_v, bias in randaugment.FIXMATCH_POOL:
        for v in (1, 9):
            out = np.asarray(op(img, v, max_v, bias, rng))
            assert out.shape == image.shape and out.dtype == np.uint8


_AUGMENTS = ["", "none", "colorjitter", "randaugment", "colorjitter,randaugment"]


@pytest.mark.parametrize("augment", _AUGMENTS)
def test_classification_transform(augment):
    tf = transforms.make_classification_transform(64, 40, 80, augment)
    tf = pickle.loads(pickle.dumps(tf))  # grain workers need a picklable callable
    ex = _example()
    out = tf(ex, np.random.default_rng(0))
    assert set(out) == {"image", "labels", "mask"}
    assert out["image"].shape == (64, 64, 3) and out["image"].dtype == np.float32
    assert out["mask"].shape == (64, 64) and out["mask"].dtype == np.uint8
    np.testing.assert_array_equal(out["labels"], ex["labels"])
    assert out["labels"].dtype == np.float32
    assert set(np.unique(out["mask"]).tolist()) <= {0, 3, 255}
    again = tf(ex, np.random.default_rng(0))
    for key in out:
        np.testing.assert_array_equal(out[key], again[key])
    # Where the mask is padding (and the canvas is bigger than the resized image), image is 0.
    if (out["mask"] == 255).all(axis=1).any():
        pad_rows = (out["mask"] == 255).all(axis=1) & (out["image"] == 0).all(axis=(1, 2))
        assert pad_rows.any()


def test_classification_transform_geometry_matches():
    """Without photometric ops, image and mask go through the same geometry."""
    h, w = 50, 70
    image = np.zeros((h, w, 3), np.uint8)
    image[10:30, 20:50] = 255
    mask = np.zeros((h, w), np.uint8)
    mask[10:30, 20:50] = 1
    ex = {"image": image, "mask": mask, "labels": np.ones(1, np.float32)}
    tf = transforms.make_classification_transform(48, 30, 60, "none")
    white = (1 - transforms.IMAGENET_MEAN) / transforms.IMAGENET_STD
    black = -transforms.IMAGENET_MEAN / transforms.IMAGENET_STD
    for seed in range(10):
        out = tf(ex, np.random.default_rng(seed))
        bright = (out["image"] > (white + black) / 2).all(axis=2)  # bicubic blurs the edges
        inside = out["mask"] == 1
        iou = (bright & inside).sum() / (bright | inside).sum()
        assert iou > 0.85


def test_bad_augment_name():
    with pytest.raises(ValueError, match="cutmix"):
        transforms.make_classification_transform(64, 40, 80, "colorjitter,cutmix")
