"""Test set-up: 8 simulated CPU devices, set before JAX initialises its backend."""

import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
# The persistent compilation cache, as for runs: a second run of the suite (and every
# `python -m pnoc_jax.main` subprocess of this one) reuses compiled programs.
os.environ.setdefault(
    "JAX_COMPILATION_CACHE_DIR",
    os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "pnoc_jax", "jax-tests"
    ),
)

import pytest

from pnoc_jax.core import compile_cache

compile_cache.enable(None)


@pytest.fixture(scope="session")
def synthetic_data_dir(tmp_path_factory) -> str:
    """The synthetic TFDS dataset, built once per test session."""
    from pnoc_jax.data import datasets

    data_dir = str(tmp_path_factory.mktemp("tfds"))
    datasets.prepare("synthetic", data_dir)
    return data_dir


def make_tiny_config(data_dir: str):
    """The quickstart config shrunk to a few seconds of work."""
    import importlib.util

    path = os.path.join(os.path.dirname(__file__), "..", "configs", "quickstart.py")
    spec = importlib.util.spec_from_file_location("quickstart_config", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config()
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
