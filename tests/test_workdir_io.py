"""Workdir I/O goes through `core.fileio`, and a workdir on an object store works.

1. No module but `core/fileio.py` touches storage directly (`open`, `os` file calls, `shutil`,
   `tempfile`, `fcntl`, `np.load`/`np.save*`, `cv2.imread`/`imwrite`, `PIL.Image.open`,
   `pathlib`/`epath` paths), except the calls of `ALLOWED`, each on paths that are never in a
   workdir or data_dir.
2. `fileio` on a `gs://` path that goes through `etils.epath` and fsspec to an in-memory object
   store (`FakeGCS`; no network): publishing is atomic (an interrupted write or rename leaves
   nothing at the name), folder moves keep "DONE.json means whole", appends, the advisory lock.
3. Real stages on that `gs://` workdir: train_cam's folder (Orbax checkpoints need tensorstore's
   own GCS driver, so it trains locally) copied there, then the runner does infer_cam and
   eval_cam, the summary and a resumed run entirely through fileio.
"""

import ast
import os
import pathlib

import numpy as np
import pytest
from etils.epath import backend as epath_backend
from fsspec.implementations.memory import MemoryFileSystem
from fsspec.registry import _registry as fsspec_registry

from pnoc_jax import pipeline
from pnoc_jax.core import artifacts, fileio, scores, writers

PACKAGE = pathlib.Path(__file__).resolve().parent.parent / "pnoc_jax"

# Calls that reach storage, by the name they resolve to through the module's imports.
_OS = (
    "open", "fdopen", "makedirs", "mkdir", "listdir", "scandir", "walk", "remove", "unlink",
    "rename", "renames", "replace", "rmdir", "removedirs", "symlink", "link", "stat", "lstat",
    "chmod", "truncate", "utime", "access",
)  # fmt: skip
_OS_PATH = (
    "exists", "lexists", "isdir", "isfile", "islink", "getsize", "getmtime", "getctime",
    "abspath", "realpath", "expanduser", "samefile",
)  # fmt: skip
_NUMPY = ("load", "save", "savez", "savez_compressed", "fromfile", "loadtxt", "savetxt")
_DENIED_EXACT = {
    "open",
    *(f"os.{n}" for n in _OS),
    *(f"os.path.{n}" for n in _OS_PATH),
    *(f"numpy.{n}" for n in _NUMPY),
    "cv2.imread",
    "cv2.imwrite",
    "PIL.Image.open",
    "pathlib.Path",
    "etils.epath.Path",
}
_DENIED_MODULES = ("shutil.", "tempfile.", "fcntl.", "glob.")

# (module, call) -> why it is not workdir I/O. Each entry must still be used (checked below).
ALLOWED = {
    # the package's own files: its config folder, /proc of this process
    ("main.py", "os.path.abspath"): "CONFIG_DIR, the package's configs/ folder",
    ("main.py", "os.path.isdir"): "CONFIG_DIR",
    ("main.py", "os.listdir"): "CONFIG_DIR",
    ("cpu_benchmark.py", "open"): "/proc/self/status and /proc/self/clear_refs",
    ("cpu_benchmark.py", "cv2.imread"): "the benchmark's photographs (--photos, local files)",
    ("cpu_benchmark.py", "os.path.exists"): "scikit-image's installed photographs",
    ("core/profiling.py", "glob.glob"): "the trace that jax.profiler just wrote (--profile_dir)",
    ("core/compile_cache.py", "os.path.expanduser"): "the local JAX compilation cache folder",
    # user inputs read with local tools: converted torch weights, pretrained files
    ("models/convert.py", "open"): "a downloaded torch checkpoint to convert (local)",
    ("models/convert.py", "pathlib.Path"): "its file name, parsed",
    ("config_lib.py", "os.path.expanduser"): "check_file: a user's input file (no fileio: "
    "config_lib imports nothing of pnoc_jax)",
    ("config_lib.py", "os.path.isfile"): "check_file",
    ("config_lib.py", "os.path.abspath"): "import_beside: the recipe helpers beside a config "
    "file (local Python)",
    # the user's raw dataset copy (TFDS manual_dir), read by the builders: local by design
    ("data/builders/common.py", "etils.epath.Path"): "the builder's own source file (TFDS)",
    ("data/builders/voc2012.py", "pathlib.Path"): "the VOCdevkit (manual_dir)",
    ("data/builders/voc2012.py", "PIL.Image.open"): "the VOCdevkit's PNG masks",
    ("data/builders/voc2012.py", "os.stat"): "sizes of the VOCdevkit's files (fingerprint)",
    ("data/builders/coco2014.py", "pathlib.Path"): "the COCO folder (manual_dir)",
    ("data/builders/coco2014.py", "open"): "COCO's annotation files and images",
    ("data/builders/coco2014.py", "os.scandir"): "COCO's image folders (fingerprint)",
    # the user's images, opened by fileio.open_read, decoded by PIL
    ("predict.py", "PIL.Image.open"): "decodes a file object from fileio.open_read",
}


def _aliases(tree: ast.Module) -> dict[str, str]:
    out = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                out[a.asname or a.name.split(".")[0]] = a.name if a.asname else a.name.split(".")[0]
        elif isinstance(node, ast.ImportFrom) and node.module:
            for a in node.names:
                out[a.asname or a.name] = f"{node.module}.{a.name}"
    return out


def _dotted(node: ast.AST) -> str | None:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        base = _dotted(node.value)
        return f"{base}.{node.attr}" if base else None
    return None


def storage_calls(source: str) -> list[tuple[int, str]]:
    """(line, resolved name) of every call in `source` that reaches storage directly."""
    tree = ast.parse(source)
    aliases = _aliases(tree)
    found = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        name = _dotted(node.func)
        if name is None:
            continue
        head, _, rest = name.partition(".")
        resolved = f"{aliases[head]}.{rest}".rstrip(".") if head in aliases else name
        if resolved in _DENIED_EXACT or resolved.startswith(_DENIED_MODULES):
            found.append((node.lineno, resolved))
    return found


def test_the_scan_sees_each_kind_of_direct_call():
    source = (
        "import os, shutil\nimport numpy as np\nfrom pathlib import Path\nimport cv2\n"
        "from PIL import Image\nimport tempfile as t\n"
        "open('x')\nos.makedirs('d')\nos.path.exists('x')\nshutil.rmtree('d')\n"
        "np.load('x')\nPath('x')\ncv2.imwrite('x', a)\nImage.open('x')\nt.mkstemp()\n"
        "os.path.join('a', 'b')\nnp.zeros(3)\n"
    )
    names = [name for _, name in storage_calls(source)]
    assert names == [
        "open", "os.makedirs", "os.path.exists", "shutil.rmtree", "numpy.load",
        "pathlib.Path", "cv2.imwrite", "PIL.Image.open", "tempfile.mkstemp",
    ]  # fmt: skip


def test_no_module_but_fileio_touches_storage_directly():
    used, violations = set(), []
    for path in sorted(PACKAGE.rglob("*.py")):
        module = path.relative_to(PACKAGE).as_posix()
        if module == "core/fileio.py":
            continue
        for line, name in storage_calls(path.read_text()):
            if (module, name) in ALLOWED:
                used.add((module, name))
            else:
                violations.append(f"pnoc_jax/{module}:{line}: {name}")
    assert not violations, (
        "workdir and data_dir I/O goes through pnoc_jax.core.fileio (see ARCHITECTURE.md, "
        "Workdir I/O); direct calls:\n" + "\n".join(violations)
    )
    assert not set(ALLOWED) - used, f"allow-list entries no longer used: {set(ALLOWED) - used}"


# ---------------------------------------------------------------------------- a gs:// store
class FakeGCS(MemoryFileSystem):
    """An in-memory object store behind the `gs://` scheme (epath -> fsspec -> here)."""

    protocol = ("gs", "gcs")
    store: dict = {}  # noqa: RUF012 (fsspec's memory store is a class attribute)
    pseudo_dirs: list = [""]  # noqa: RUF012

    @classmethod
    def _strip_protocol(cls, path):
        if isinstance(path, list):
            return [cls._strip_protocol(p) for p in path]
        path = str(path).split("://", 1)[-1].strip("/")
        return f"/{path}" if path else ""


@pytest.fixture
def gcs(monkeypatch):
    """`gs://` served by FakeGCS for the test (fsspec's registry restored after), empty."""
    for protocol in ("gs", "gcs"):
        monkeypatch.setitem(fsspec_registry, protocol, FakeGCS)
    epath_backend.fsspec_backend._get_filesystem.cache_clear()
    FakeGCS.store.clear()
    FakeGCS.pseudo_dirs[:] = [""]
    yield FakeGCS.store
    FakeGCS.store.clear()
    epath_backend.fsspec_backend._get_filesystem.cache_clear()


def _objects(store) -> list[str]:
    return sorted(store)


def test_uris_are_remote_and_kept_as_given():
    assert fileio.is_remote("gs://b/run") and not fileio.is_remote("/tmp/run")
    assert fileio.expand("gs://b/run") == "gs://b/run"
    assert fileio.expand("~/x") == os.path.join(os.path.expanduser("~"), "x")


def test_object_store_files_folders_and_appends(gcs):
    fileio.write_json("gs://b/run/s/config.json", {"a": 1})
    fileio.write_npz("gs://b/run/s/x.npz", {"k": np.arange(3)})
    assert fileio.read_json("gs://b/run/s/config.json") == {"a": 1}
    np.testing.assert_array_equal(fileio.read_npz("gs://b/run/s/x.npz")["k"], np.arange(3))
    assert fileio.listdir("gs://b/run") == ["s"] and fileio.isdir("gs://b/run/s")
    assert fileio.listdir("gs://b/run/none") == [] and not fileio.exists("gs://b/run/none")
    for row in ("1\n", "2\n"):
        fileio.append_text("gs://b/run/s/m.jsonl", row)
    assert fileio.read_text("gs://b/run/s/m.jsonl") == "1\n2\n"
    with pytest.raises(FileNotFoundError):
        fileio.read_bytes("gs://b/run/s/absent")
    assert not [o for o in _objects(gcs) if o.endswith(".tmp")]


@pytest.mark.parametrize("where", ["local", "gs"])
def test_a_write_that_fails_midway_leaves_nothing_at_the_name(gcs, tmp_path, where):
    folder = str(tmp_path) if where == "local" else "gs://b/run"
    path = os.path.join(folder, "DONE.json")
    with pytest.raises(RuntimeError), fileio.atomic_write(path) as f:
        f.write(b'{"fingerprint": "half')
        raise RuntimeError("killed mid-write")
    assert not fileio.exists(path) and fileio.listdir(folder) == []
    fileio.write_text(path, "old")
    with pytest.raises(RuntimeError), fileio.atomic_write(path) as f:
        f.write(b"new, but cut")
        raise RuntimeError
    assert fileio.read_text(path) == "old"  # the previous file is left as it was
    assert fileio.listdir(folder) == ["DONE.json"]


def test_an_upload_that_fails_before_the_rename_publishes_nothing(gcs, monkeypatch):
    def broken_rename(self, target):
        raise OSError("connection reset during the rename")

    monkeypatch.setattr(type(fileio._epath("gs://b/x")), "rename", broken_rename)
    with pytest.raises(OSError, match="connection reset"):
        fileio.write_json("gs://b/run/s/DONE.json", {"fingerprint": "f"})
    assert not fileio.exists("gs://b/run/s/DONE.json")
    assert not [o for o in _objects(gcs) if o.endswith(".tmp")]  # the temporary object went


def test_an_interrupted_folder_move_never_leaves_a_finished_looking_partial(gcs, monkeypatch):
    for name in ("DONE.json", "config.json", "a.npz", "b.npz"):
        fileio.write_text(f"gs://b/run/s/{name}", name)
    copied = []
    real = fileio.write_bytes

    def dies_after_two(path, data):
        if path.startswith("gs://b/run/s.stale-1/") and len(copied) == 2:
            raise OSError("preempted")
        copied.append(path)
        real(path, data)

    monkeypatch.setattr(fileio, "write_bytes", dies_after_two)
    with pytest.raises(OSError, match="preempted"):
        fileio.move_tree("gs://b/run/s", "gs://b/run/s.stale-1", marker="DONE.json")
    assert not fileio.exists("gs://b/run/s.stale-1/DONE.json")  # the marker is copied last
    assert fileio.exists("gs://b/run/s/DONE.json")  # the source is untouched
    monkeypatch.setattr(fileio, "write_bytes", real)
    fileio.rmtree("gs://b/run/s.stale-1", marker="DONE.json")
    fileio.move_tree("gs://b/run/s", "gs://b/run/s.stale-1", marker="DONE.json")
    assert fileio.listdir("gs://b/run") == ["s.stale-1"]
    assert fileio.listdir("gs://b/run/s.stale-1") == ["DONE.json", "a.npz", "b.npz", "config.json"]


def test_the_object_store_lock_refuses_a_second_holder_and_is_released(gcs):
    lock = "gs://b/run/.lock"
    with fileio.lock(lock, f"{fileio.holder_description()} since now"):
        held = r"pid \d+ on .* delete gs://b/run/\.lock"
        with pytest.raises(fileio.LockHeld, match=held), fileio.lock(lock, "pid 1 on x"):
            pass
    assert not fileio.exists(lock)
    fileio.write_text(lock, "pid 999999999 on another-host [lock x]\n")  # a run killed elsewhere
    with pytest.raises(fileio.LockHeld, match="another-host"), fileio.lock(lock, "pid 1 on x"):
        pass


def test_metric_writer_on_the_object_store_appends_and_drops_rows_after_a_resume(gcs):
    folder = "gs://b/run/train_cam"
    writer = writers.MetricWriter(folder)
    writer.restart(0)
    for step in (1, 2, 3):
        writer.write(step, {"loss": step / 10})
    writers.MetricWriter(folder).restart(2)
    assert [row["step"] for row in writers.read_metrics(folder)] == [1, 2]
    first, _ = fileio.listdir(os.path.join(folder, "tensorboard"))  # one per writer
    data = fileio.read_bytes(os.path.join(folder, "tensorboard", first))
    assert data.count(b"brain.Event:2") == 1 and data.count(b"loss") == 3  # appended events


@pytest.mark.slow
def test_stages_run_on_a_gs_workdir(gcs, tiny_config, tmp_path, monkeypatch):
    """train_cam locally (Orbax), its folder copied to gs://, then infer_cam and eval_cam by the
    runner on the gs:// workdir: outputs, DONE.json, summary, the lock, a skipping rerun."""
    monkeypatch.chdir(tmp_path)  # anything written to a local "gs:" folder would land here
    local = str(tmp_path / "local")
    tiny_config.runtime.num_workers = 1  # the fake store lives in this process
    pipeline.run_stage("train_cam", tiny_config, local)
    workdir = "gs://bucket/run"
    fileio.copy_tree(
        artifacts.stage_dir(local, "train_cam"),
        artifacts.stage_dir(workdir, "train_cam"),
        marker=artifacts.DONE,
    )
    tiny_config.stages = ("train_cam", "infer_cam", "eval_cam")
    pipeline.run_stages(tiny_config, workdir)
    for name in tiny_config.stages:
        assert pipeline.is_finished(workdir, name, tiny_config)
    split = tiny_config.infer.splits[0]
    cams = fileio.listdir(artifacts.cam_dir(workdir, split))
    assert cams and all(c.endswith(".npz") for c in cams)
    record = scores.read_image(artifacts.cam_dir(workdir, split), cams[0][:-4], ("cam",))
    assert record["cam"].ndim == 3
    assert 0 <= fileio.read_json(artifacts.metrics_file(workdir, "eval_cam"))["miou"] <= 1
    assert all(fileio.exists(p) for p in artifacts.report_files(workdir, "eval_cam"))
    summary, _ = artifacts.summary_files(workdir)
    assert "eval_cam" in fileio.read_json(summary)
    assert not fileio.exists(artifacts.lock_file(workdir))  # released
    assert os.listdir(tmp_path) == ["local"]  # nothing went to the local disk
    assert not [o for o in _objects(gcs) if o.endswith(".tmp")]
    before = dict(gcs)
    for name in tiny_config.stages:
        assert not pipeline.run_stage(name, tiny_config, workdir)  # finished: skipped
    assert set(gcs) == set(before)
