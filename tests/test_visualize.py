"""Visualisation helpers: palette, overlays and grids."""

import numpy as np
import pytest

from pnoc_jax import visualize


def test_palette_and_overlay():
    mask = np.array([[0, 1], [15, 255]], np.uint8)
    rgb = visualize.colorize_mask(mask)
    np.testing.assert_array_equal(rgb[0, 0], [0, 0, 0])
    np.testing.assert_array_equal(rgb[0, 1], [128, 0, 0])  # aeroplane
    np.testing.assert_array_equal(rgb[1, 0], [192, 128, 128])  # person
    out = visualize.overlay_cam(np.zeros((2, 2, 3), np.uint8), np.ones((2, 2)))
    assert out.dtype == np.uint8 and out.shape == (2, 2, 3)


def test_pseudo_label_grid(tmp_path):
    from pnoc_jax.core import fileio, scores

    mask = np.zeros((6, 8), np.uint8)
    mask[2:5, 3:7] = 2
    example = {"id": "a", "image": np.full((6, 8, 3), 50, np.uint8), "mask": mask}
    keys = np.array([0, 2])
    score = (mask[None] == 2).astype(np.float32)
    scores.write(str(tmp_path / "a.npz"), keys, hr_cam=score, rw=score)
    fileio.write_png(str(tmp_path / "a.png"), mask)
    grid = visualize.pseudo_label_grid([example, example], *[str(tmp_path)] * 3, size=16)
    assert grid.shape == (5 * 16, 2 * 16, 3) and grid.dtype == np.uint8
    # Row 5 (pseudo-label) shows class 2's palette colour where the mask has class 2.
    np.testing.assert_array_equal(grid[4 * 16 + 8, 9], visualize.colorize_mask(mask)[3, 4])
    # The reference's pickled-dict .npy is read too; a missing PNG is named.
    official = {"keys": keys, "hr_cam": score, "rw": score}
    np.save(str(tmp_path / "b.npy"), np.array(official, dtype=object), allow_pickle=True)
    with pytest.raises(FileNotFoundError, match=r"b\.png"):
        visualize.pseudo_label_grid([{**example, "id": "b"}], *[str(tmp_path)] * 3)
    fileio.write_png(str(tmp_path / "b.png"), mask)
    both = visualize.pseudo_label_grid([example, {**example, "id": "b"}], *[str(tmp_path)] * 3, 16)
    np.testing.assert_array_equal(both, grid)
