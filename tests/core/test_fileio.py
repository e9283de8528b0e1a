"""Atomic writes honour the umask and leave nothing behind when they fail."""

import os
import stat

import numpy as np
import pytest

from pnoc_jax.core import fileio, scores, weights


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
