"""Test set-up: 8 simulated CPU devices, set before JAX initialises its backend."""

import fcntl
import os
import shutil
import subprocess
import sys
from collections.abc import Callable

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
# The persistent compilation cache, as for runs: a second run of the suite (and every
# `python -m pnoc_jax.main` subprocess of this one) reuses compiled programs. Runs cache what
# took over a second to compile; the suite's programs are tiny and many (a few hundred
# milliseconds each), so here every program is kept.
os.environ.setdefault(
    "JAX_COMPILATION_CACHE_DIR",
    os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "pnoc_jax", "jax-tests"
    ),
)
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")

import jax
import pytest

from pnoc_jax.core import compile_cache

compile_cache.enable(None)
jax.config.update(
    "jax_persistent_cache_min_compile_time_secs",
    float(os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"]),
)


def _built_once(tmp_path_factory, name: str, build: Callable[[str], None]) -> str:
    """`<session tmp>/<name>`, made by `build(folder)` once per test session, also when
    pytest-xdist runs the suite in several workers: the first worker to come builds it under a
    file lock, the others wait for it and reuse it."""
    root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        root = root.parent  # the temporary folder all workers of this session share
    folder = root / name
    with open(root / f"{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (folder / ".built").exists():
            shutil.rmtree(folder, ignore_errors=True)
            folder.mkdir()
            build(str(folder))
            (folder / ".built").touch()
    return str(folder)


@pytest.fixture(scope="session")
def synthetic_data_dir(tmp_path_factory) -> str:
    """The synthetic TFDS dataset, built once per test session."""
    from pnoc_jax.data import datasets

    return _built_once(
        tmp_path_factory, "tfds", lambda folder: datasets.prepare("synthetic", folder)
    )


def make_tiny_config(data_dir: str):
    """The quickstart config shrunk to a few seconds of work."""
    config = load_config()
    config.data.data_dir = data_dir
    config.data.image_size = 32
    small = dict(batch_size=8, steps=6, min_size=32, max_size=48)
    config.oc.update(small, steps=3)
    config.train.update(small, strategy="cam", init_backbone_from="")
    config.stages = ("train_cam", "infer_cam", "eval_cam")
    config.infer.scales = (1.0, 0.5)
    config.eval.crf_iterations = 0  # the CRF sweep: tests/evaluation, tests/test_recipes.py
    config.runtime.update(ckpt_every=2, log_every=1, predict_batch_size=4)
    return config


@pytest.fixture
def tiny_config(synthetic_data_dir):
    return make_tiny_config(synthetic_data_dir)


# The shared tiny run: the quickstart's stages but the saliency family's (tests/saliency run
# those; conventional affinity labels feed the random walk), every split `val`, tiny networks.
# tests/test_quickstart.py reads it, and tests/test_multiprocess.py compares its 2-process run
# against it (the same overrides as command-line flags), so it is trained once per session.
TINY_RUN_STAGES = (
    "train_oc", "train_cam", "infer_cam", "eval_cam",
    "affinity_labels", "train_affinity", "random_walk", "eval_pseudo_labels",
    "train_segmentation", "infer_segmentation", "eval_segmentation",
    "train_segmentation_gt", "infer_segmentation_gt", "eval_segmentation_gt",
)  # fmt: skip


def tiny_run_overrides(data_dir: str, stages: tuple[str, ...] = TINY_RUN_STAGES) -> dict:
    """{dotted key: value} turning configs/quickstart.py into the shared tiny run."""
    small = {"batch_size": 8, "min_size": 32, "max_size": 48}
    return {
        "data.data_dir": data_dir,
        "data.image_size": 32,
        "stages": stages,
        **{f"oc.{k}": v for k, v in small.items()},
        "oc.steps": 3,
        **{f"train.{k}": v for k, v in small.items()},
        "train.steps": 4,
        "infer.splits": ("val",),
        "infer.scales": (1.0, 0.5),
        "eval.split": "val",
        "eval.crf_iterations": 0,  # the CRF sweep: tests/evaluation, tests/test_recipes.py
        "affinity_labels.split": "val",
        "affinity_labels.saliency": "",
        "affinity_labels.crf_iterations": 1,
        "affinity.batch_size": 8,
        "affinity.steps": 3,
        "affinity.crop_size": 48,
        "affinity.min_size": 40,
        "affinity.max_size": 56,
        "affinity.radius": 5,
        "rw.splits": ("val",),
        "rw.exp_times": 2,
        "rw.crf_iterations": 0,  # the pseudo-labels' CRF: tests/affinity, tests/test_recipes.py
        # DeepLab on the val pseudo-labels (the only split walked here), backbone from
        # train_oc; 3 steps < one epoch, so one validation, at the end: it picks the kept
        # checkpoint (weights/best.npz) and writes the metrics.
        "segmentation.split": "val",
        "segmentation.val_split": "val",
        "segmentation.steps": 3,
        **{f"segmentation.{k}": v for k, v in small.items()},
        "segmentation.crop_size": 32,  # the synthetic recipe's head (64 wide, OS 8)
        "segmentation_infer.scales": (1.0,),
        "segmentation_infer.crf_iterations": 1,
        "runtime.num_workers": 1,
        "runtime.ckpt_every": 2,
    }


def as_flags(overrides: dict) -> list[str]:
    """The overrides as `python -m pnoc_jax.main` flags."""
    return [f"--config.{k}={v if isinstance(v, str) else repr(v)}" for k, v in overrides.items()]


REPO_ROOT = os.path.join(os.path.dirname(__file__), "..")
MAIN_ENV = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=8"}


def run_main(
    *args: str, config: str = "configs/quickstart.py", env: dict | None = None
) -> subprocess.CompletedProcess:
    """`python -m pnoc_jax.main --config <config> <args>` as a user runs it, output captured;
    `env` replaces variables of MAIN_ENV."""
    command = [sys.executable, "-m", "pnoc_jax.main", "--config", config, *args]
    return subprocess.run(
        command,
        cwd=REPO_ROOT,
        env={**MAIN_ENV, **(env or {})},
        capture_output=True,
        text=True,
        timeout=300,
    )


def one_error_line(result: subprocess.CompletedProcess) -> str:
    """The run's one `pnoc_jax: error:` line; asserts there is exactly one and no traceback."""
    errors = [line for line in result.stderr.splitlines() if line.startswith("pnoc_jax: error:")]
    assert len(errors) == 1, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    return errors[0]


def load_config(name: str = "quickstart", arg: str | None = None):
    """`get_config(arg)` of `configs/<name>.py`, loaded from its file as main does."""
    import importlib.util

    path = os.path.join(os.path.dirname(__file__), "..", "configs", f"{name}.py")
    spec = importlib.util.spec_from_file_location(f"{name}_config", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(arg)


@pytest.fixture(scope="session")
def tiny_run(synthetic_data_dir, tmp_path_factory):
    """(config, workdir) of the shared tiny run, finished once per session on 1 x 8 devices.
    Tests must not change it: copy the workdir first (`shutil.copytree`)."""
    from pnoc_jax import config_lib, pipeline

    config = load_config()
    for key, value in tiny_run_overrides(synthetic_data_dir).items():
        section, _, leaf = key.rpartition(".")
        (config_lib.get(config, section) if section else config)[leaf] = value
    workdir = _built_once(
        tmp_path_factory, "tiny_run", lambda folder: pipeline.run_stages(config, folder)
    )
    return config, workdir
