"""The training loop: data-parallel equivalence, exact resume, preemption and the NaN guard."""

import os
import signal

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest

from pnoc_jax.cam import strategies
from pnoc_jax.cam import train as cam_train
from pnoc_jax.core import artifacts, checkpoint, distributed, optim, rng, weights
from pnoc_jax.core.loop import NonFiniteLoss, Preempted
from pnoc_jax.core.train_state import create_state


def _final_params(workdir):
    """The exported final variables of train_cam."""
    return weights.load(artifacts.weights_file(workdir, "train_cam"))


def _checkpointed_params(workdir):
    """The latest checkpoint's f params, restored without a target (no optimizer needed)."""
    ckpt = checkpoint.Checkpointer(artifacts.checkpoint_dir(workdir, "train_cam"), save_every=1)
    step = ckpt.latest_step()
    if step is None:
        ckpt.close()
        return None, None
    raw = ckpt.manager.restore(step, args=ocp.args.Composite(f=ocp.args.StandardRestore()))
    ckpt.close()
    return step, jax.device_get(raw["f"]["params"])


def _assert_trees_equal(a, b):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def _one_step(config, devices, batch):
    mesh = distributed.make_mesh(devices)
    model = cam_train.build_model(config)
    tx, _ = optim.make_optimizer(optim.OptimizerConfig(lr=0.1, total_steps=10))
    state = create_state(model, tx, rng.init_key(0), (1, 32, 32, 3), mesh)
    cfg = strategies.StrategyConfig("cam", total_steps=10, label_smoothing=0.1)
    (update,) = strategies.build_updates(cfg, model=model, oc_model=None, mesh=mesh, seed=0)
    with jax.set_mesh(mesh):
        state, metrics, _ = update.fn(
            state, {}, distributed.to_global(batch, mesh), None, jnp.asarray(0)
        )
    return jax.device_get(state.params), jax.device_get(state.batch_stats), float(metrics["loss"])


def test_one_step_same_on_1_and_8_devices(tiny_config):
    assert jax.device_count() == 8
    r = np.random.default_rng(0)
    batch = {
        "image": r.normal(size=(8, 32, 32, 3)).astype(np.float32),
        "labels": (r.random((8, 6)) < 0.4).astype(np.float32),
    }
    p1, s1, l1 = _one_step(tiny_config, jax.devices()[:1], batch)
    p8, s8, l8 = _one_step(tiny_config, jax.devices(), batch)
    assert l1 == pytest.approx(l8, rel=1e-6)
    for a, b in zip(jax.tree.leaves((p1, s1)), jax.tree.leaves((p8, s8)), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_preempted_and_crashed_runs_resume_exactly(tiny_config, tmp_path):
    full = str(tmp_path / "full")
    cam_train.train_cam(tiny_config, full)
    expected = _final_params(full)
    # The exported weights are the final checkpoint's variables.
    step, params = _checkpointed_params(full)
    assert step == tiny_config.train.steps
    _assert_trees_equal(params, expected["params"])

    # SIGTERM after step 3: a checkpoint at step 3 is written and Preempted raised.
    preempted = str(tmp_path / "preempted")

    def sigterm_at_3(step):
        if step == 3:
            os.kill(os.getpid(), signal.SIGTERM)

    with pytest.raises(Preempted):
        cam_train.train_cam(tiny_config, preempted, on_step=sigterm_at_3)
    assert not os.path.exists(artifacts.weights_file(preempted, "train_cam"))
    ckpt_dir = artifacts.checkpoint_dir(preempted, "train_cam")
    manager = checkpoint.Checkpointer(ckpt_dir, save_every=2)
    assert manager.latest_step() == 3
    manager.close()
    cam_train.train_cam(tiny_config, preempted)
    _assert_trees_equal(_final_params(preempted), expected)

    # A hard crash at step 5: resumes from the periodic checkpoint at step 4.
    crashed = str(tmp_path / "crashed")

    def crash_at_5(step):
        if step == 5:
            raise KeyboardInterrupt("simulated kill")

    with pytest.raises(KeyboardInterrupt):
        cam_train.train_cam(tiny_config, crashed, on_step=crash_at_5)
    cam_train.train_cam(tiny_config, crashed)
    _assert_trees_equal(_final_params(crashed), expected)


def test_nan_stops_and_keeps_last_good_checkpoint(tiny_config, tmp_path):
    tiny_config.train.lr = 1e30
    with pytest.raises(NonFiniteLoss, match="non-finite"):
        cam_train.train_cam(tiny_config, str(tmp_path))
    assert not os.path.exists(artifacts.weights_file(str(tmp_path), "train_cam"))
    step, params = _checkpointed_params(str(tmp_path))
    if step is not None:  # every kept checkpoint is finite
        assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(params))
