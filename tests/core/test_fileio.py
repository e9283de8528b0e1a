"""Atomic writes honour the umask; label PNGs are palette PNGs that read back as indices."""

import errno
import os
import stat

import cv2
import numpy as np
import pytest
from PIL import Image

from pnoc_jax.core import fileio, scores, weights
from pnoc_jax.core.masks import PALETTE


@pytest.fixture
def process_umask(request):
    """Sets the process umask to `request.param` (and forgets the cached one) for one test."""
    old = os.umask(request.param)
    fileio.umask.cache_clear()
    try:
        yield request.param
    finally:
        os.umask(old)
        fileio.umask.cache_clear()


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.mark.parametrize("process_umask", [0o022, 0o077], ids=["022", "077"], indirect=True)
def test_atomic_files_get_the_umask_mode(tmp_path, process_umask):
    assert fileio.umask() == process_umask
    expected = 0o666 & ~process_umask
    out = tmp_path / "new" / "deeper"
    fileio.write_json(str(out / "a.json"), {"x": 1})
    fileio.write_png(str(out / "a.png"), np.zeros((2, 3), np.uint8))
    weights.save({"params": {"w": np.ones(2)}}, str(out / "w.npz"))
    scores.write(str(out / "s.npz"), np.array([0, 1]), rw=np.zeros((1, 2, 2), np.float32))
    for name in ("a.json", "a.png", "w.npz", "s.npz"):
        assert _mode(out / name) == expected, name
    # Replacing an existing file gives the new file the same mode.
    fileio.write_text(str(out / "a.json"), "{}")
    assert _mode(out / "a.json") == expected
    # Folders are made as os.makedirs makes them; no temp file is left behind.
    assert _mode(tmp_path / "new") == 0o777 & ~process_umask
    assert sorted(os.listdir(out)) == ["a.json", "a.png", "s.npz", "w.npz"]


def test_umask_is_read_once_and_kept(tmp_path):
    fileio.umask.cache_clear()
    old = os.umask(0o027)
    try:
        assert fileio.umask() == 0o027
        os.umask(0o077)
        assert fileio.umask() == 0o027  # cached: read once per process
        assert os.umask(0o077) == 0o077  # reading it did not change the process umask
    finally:
        os.umask(old)
        fileio.umask.cache_clear()


def test_failed_block_leaves_no_file(tmp_path):
    path = tmp_path / "x.bin"
    with pytest.raises(RuntimeError), fileio.atomic_path(str(path)) as tmp:
        with open(tmp, "wb") as f:
            f.write(b"partial")
        raise RuntimeError
    assert os.listdir(tmp_path) == []


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full")
def test_a_full_disk_names_the_file_being_written(tmp_path):
    # Writing to /dev/full fails with ENOSPC in write/close, where Python names no file.
    with pytest.raises(OSError) as raised:
        fileio.append_text("/dev/full", "a logged row\n")
    assert raised.value.errno == errno.ENOSPC and raised.value.filename == "/dev/full"
    path = str(tmp_path / "x.json")
    with pytest.raises(OSError) as raised, fileio.atomic_write(path) as f:
        f.write(b"{}")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    assert raised.value.filename == path and not os.listdir(tmp_path)


def test_label_png_is_palette_and_reads_back_bit_identical(tmp_path):
    label = np.random.default_rng(0).integers(0, 22, (7, 9)).astype(np.uint8)
    label[0, :3] = 255
    path = str(tmp_path / "l.png")
    fileio.write_png(path, label)
    with Image.open(path) as image:
        assert image.mode == "P"
        palette = np.array(image.getpalette(), np.uint8).reshape(-1, 3)
        np.testing.assert_array_equal(np.array(image), label)
    np.testing.assert_array_equal(palette, PALETTE)
    out = fileio.read_png(path)
    assert out.dtype == np.uint8 and out.shape == label.shape
    np.testing.assert_array_equal(out, label)
    # An image viewer shows the palette colours (OpenCV expands them to BGR).
    np.testing.assert_array_equal(cv2.imread(path)[..., ::-1], PALETTE[label])


def test_label_png_needs_a_uint8_map(tmp_path):
    with pytest.raises(ValueError, match=r"uint8\[H, W\].*int64\(2, 2\)"):
        fileio.write_png(str(tmp_path / "x.png"), np.zeros((2, 2), np.int64))


def test_greyscale_pngs_read_as_values(tmp_path):
    grey = np.array([[0, 255, 7], [128, 1, 0]], np.uint8)
    path = str(tmp_path / "g.png")
    fileio.write_bytes(path, fileio.encode_png(grey))  # cv2 greyscale, as the TFDS builders
    with Image.open(path) as image:
        assert image.mode == "L"
    np.testing.assert_array_equal(fileio.read_png(path), grey)
    rgb_grey = str(tmp_path / "rgb_grey.png")
    Image.fromarray(np.repeat(grey[..., None], 3, axis=2)).save(rgb_grey)
    np.testing.assert_array_equal(fileio.read_png(rgb_grey), grey)


def test_png_errors_name_the_file(tmp_path):
    colour = str(tmp_path / "c.png")
    rgb = np.zeros((2, 2, 3), np.uint8)
    rgb[..., 1] = 1
    Image.fromarray(rgb).save(colour)
    with pytest.raises(ValueError, match=r"c\.png: expected a palette or greyscale PNG"):
        fileio.read_png(colour)
    with pytest.raises(FileNotFoundError, match=r"missing\.png"):
        fileio.read_png(str(tmp_path / "missing.png"))
    broken = tmp_path / "b.png"
    broken.write_bytes(b"not a png")
    with pytest.raises(ValueError, match=r"b\.png: not a readable PNG"):
        fileio.read_png(str(broken))


def test_expand_makes_user_paths_absolute_and_keeps_unset_and_uris(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", "/home/someone")
    assert fileio.expand("w.npz") == str(tmp_path / "w.npz")
    assert fileio.expand("~/w.npz") == "/home/someone/w.npz"
    assert fileio.expand("gs://bucket/run") == "gs://bucket/run"
    assert fileio.expand("") == ""  # an unset path is not the working directory
