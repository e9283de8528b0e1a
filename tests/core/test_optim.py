"""Parameter groups, LR multipliers, weight-decay masks and the poly schedule (spec §2)."""

import jax.numpy as jnp
import numpy as np
import optax
import pytest

from pnoc_jax.core import optim

PARAMS = {
    "backbone": {
        "conv1": {"kernel": jnp.ones(2)},
        "bn1": {"scale": jnp.ones(2), "bias": jnp.ones(2)},
    },
    "classifier": {"kernel": jnp.ones(2)},
    "head": {"bias": jnp.ones(2)},
}


def test_param_groups():
    labels = optim.param_labels(PARAMS)
    assert labels["backbone"]["conv1"]["kernel"] == "backbone_weight"
    assert labels["backbone"]["bn1"]["scale"] == "backbone_weight"  # BN γ gets weight decay
    assert labels["backbone"]["bn1"]["bias"] == "backbone_bias"
    assert labels["classifier"]["kernel"] == "head_weight"
    assert labels["head"]["bias"] == "head_bias"
    assert optim.param_labels(PARAMS, frozen=("bn",))["backbone"]["bn1"]["scale"] == "frozen"


def test_first_step_multipliers_and_weight_decay():
    lr, wd = 0.1, 0.01
    tx, _ = optim.make_optimizer(optim.OptimizerConfig(lr=lr, total_steps=10, weight_decay=wd))
    grads = {k: v for k, v in PARAMS.items()}
    updates, _ = tx.update(grads, tx.init(PARAMS), PARAMS)
    # torch SGD: -lr * mult * (g + wd * p) for weights, -lr * mult * g for biases.
    np.testing.assert_allclose(updates["backbone"]["conv1"]["kernel"], -lr * 1 * (1 + wd))
    np.testing.assert_allclose(updates["backbone"]["bn1"]["scale"], -lr * 1 * (1 + wd))
    np.testing.assert_allclose(updates["backbone"]["bn1"]["bias"], -lr * 2 * 1)
    np.testing.assert_allclose(updates["classifier"]["kernel"], -lr * 10 * (1 + wd), rtol=1e-6)
    np.testing.assert_allclose(updates["head"]["bias"], -lr * 20, rtol=1e-6)


def test_frozen_parameters_do_not_move():
    tx, _ = optim.make_optimizer(optim.OptimizerConfig(lr=0.1, total_steps=10, frozen=("bn",)))
    updates, _ = tx.update(PARAMS, tx.init(PARAMS), PARAMS)
    np.testing.assert_array_equal(updates["backbone"]["bn1"]["scale"], 0)
    np.testing.assert_array_equal(updates["backbone"]["bn1"]["bias"], 0)


def test_poly_schedule():
    s = optim.poly_schedule(0.1, 100, 0.9)
    assert float(s(0)) == pytest.approx(0.1)
    assert float(s(50)) == pytest.approx(0.1 * 0.5**0.9, rel=1e-5)
    assert float(s(100)) == pytest.approx(0.0, abs=1e-9)


def test_accumulation_averages_gradients():
    tx, _ = optim.make_optimizer(
        optim.OptimizerConfig(lr=1.0, total_steps=10, weight_decay=0.0, accumulate_steps=2)
    )
    params = {"head": {"bias": jnp.zeros(1)}}
    state = tx.init(params)
    u1, state = tx.update({"head": {"bias": jnp.array([1.0])}}, state, params)
    np.testing.assert_array_equal(u1["head"]["bias"], 0.0)  # no step yet
    u2, state = tx.update({"head": {"bias": jnp.array([3.0])}}, state, params)
    # mean gradient 2, head-bias multiplier 20, lr at optimizer step 0 is 1.
    np.testing.assert_allclose(optax.apply_updates(params, u2)["head"]["bias"], [-40.0])
