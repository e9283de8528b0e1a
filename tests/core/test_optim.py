"""Parameter groups, LR multipliers, weight-decay masks and the poly schedule (method.md §2)."""

import jax
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


# ---------------------------------------------------------------------------- accumulation
# The reference (torch SGD, momentum 0) with k accumulated micro-batches per optimizer step t:
#   CAM scripts (loss not divided): w <- w - lr_g(t) * (sum_i g_i + wd_g * w)
#   DeepLab (loss divided by k):    w <- w - lr_g(t) * (sum_i g_i / k + wd_g * w)
# lr_g(t) = lr * mult_g * (1 - t/T)^0.9; wd_g = wd on weights (kernels, BN scales), 0 on biases.

MULTS = {"backbone_weight": 1.0, "backbone_bias": 2.0, "head_weight": 10.0, "head_bias": 20.0}


def _reference_sgd(params, micro_grads, *, lr, wd, k, total, divide, decay_all=False):
    """NumPy oracle: the reference's parameters after len(micro_grads) // k optimizer steps."""
    labels = optim.param_labels(params)
    w = jax.tree.map(np.asarray, params)
    for t in range(len(micro_grads) // k):
        group = micro_grads[t * k : (t + 1) * k]
        summed = jax.tree.map(lambda *g: np.sum(g, axis=0), *group)
        poly = (1 - t / total) ** 0.9

        def step(w_, g_, label, poly=poly):
            decay = wd if (decay_all or label.endswith("weight")) else 0.0
            grad = g_ / k if divide else g_
            return w_ - lr * MULTS[label] * poly * (grad + decay * w_)

        w = jax.tree.map(step, w, summed, labels)
    return w


def _run(tx, params, micro_grads):
    state = tx.init(params)
    for g in micro_grads:
        updates, state = tx.update(g, state, params)
        params = optax.apply_updates(params, updates)
    return params


def _micro_grads(n, seed=0):
    rng = np.random.default_rng(seed)
    return [
        jax.tree.map(lambda p: jnp.asarray(rng.standard_normal(p.shape), jnp.float32), PARAMS)
        for _ in range(n)
    ]


@pytest.mark.parametrize("accumulation", ["sum", "mean"])
def test_accumulation_with_weight_decay_equals_the_reference_update(accumulation):
    """3 optimizer steps of 2 micro-batches with wd 0.05 (large, so decay is visible): equal to
    the reference's update within float32 rounding, decay counted once per optimizer step."""
    lr, wd, k, total = 0.1, 0.05, 2, 10
    params = jax.tree.map(lambda p: p * 0.7, PARAMS)
    grads = _micro_grads(3 * k)
    cfg = optim.OptimizerConfig(
        lr=lr, total_steps=total, weight_decay=wd, accumulate_steps=k, accumulation=accumulation
    )
    ours = _run(optim.make_optimizer(cfg)[0], params, grads)
    expected = _reference_sgd(
        params, grads, lr=lr, wd=wd, k=k, total=total, divide=accumulation == "mean"
    )
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), ours, expected
    )

    if accumulation == "sum":
        # What the config did before: average at k times the lr. Same gradient step, but the
        # decay term is k times the reference's, so the weights differ.
        emulated = optim.OptimizerConfig(
            lr=k * lr, total_steps=total, weight_decay=wd, accumulate_steps=k
        )
        old = _run(optim.make_optimizer(emulated)[0], params, grads)
        w_old = np.asarray(old["backbone"]["conv1"]["kernel"])
        w_ref = expected["backbone"]["conv1"]["kernel"]
        assert np.abs(w_old - w_ref).max() > 1e-3
        np.testing.assert_allclose(old["head"]["bias"], expected["head"]["bias"], rtol=1e-5)


def test_summed_accumulation_matches_torch_sgd():
    """The same against torch.optim.SGD itself: 4 parameter groups, poly lr set before each
    step, .grad accumulated over 2 backward passes (the reference's loop)."""
    torch = pytest.importorskip("torch", reason="torch is only the oracle here")
    lr, wd, k, total = 0.1, 0.05, 2, 10
    params = jax.tree.map(lambda p: p * 0.7, PARAMS)
    grads = _micro_grads(3 * k, seed=1)
    labels = optim.param_labels(params)
    tparams = [torch.tensor(np.asarray(p), requires_grad=True) for p in jax.tree.leaves(params)]
    groups = [
        {
            "params": [p for p, label in zip(tparams, jax.tree.leaves(labels)) if label == g],
            "lr": lr * MULTS[g],
            "weight_decay": wd if g.endswith("weight") else 0.0,
        }
        for g in optim.GROUPS
    ]
    sgd = torch.optim.SGD(groups, lr=lr, momentum=0)
    initial = [g["lr"] for g in sgd.param_groups]
    for t in range(3):
        for group, lr0 in zip(sgd.param_groups, initial):
            group["lr"] = lr0 * (1 - t / total) ** 0.9
        for g in grads[t * k : (t + 1) * k]:
            for p, gi in zip(tparams, jax.tree.leaves(g)):
                gi = torch.tensor(np.asarray(gi))
                p.grad = gi if p.grad is None else p.grad + gi
        sgd.step()
        sgd.zero_grad(set_to_none=True)
    cfg = optim.OptimizerConfig(
        lr=lr, total_steps=total, weight_decay=wd, accumulate_steps=k, accumulation="sum"
    )
    ours = jax.tree.leaves(_run(optim.make_optimizer(cfg)[0], params, grads))
    for a, p in zip(ours, tparams):
        np.testing.assert_allclose(a, p.detach().numpy(), rtol=1e-5, atol=1e-6)


def test_decay_all_decays_biases_too():
    lr, wd = 0.1, 0.01
    cfg = optim.OptimizerConfig(
        lr=lr, total_steps=10, weight_decay=wd, lr_mult=(1.0, 1.0, 1.0, 1.0), decay_all=True
    )
    tx, _ = optim.make_optimizer(cfg)
    updates, _ = tx.update(PARAMS, tx.init(PARAMS), PARAMS)
    for leaf in jax.tree.leaves(updates):
        np.testing.assert_allclose(leaf, -lr * (1 + wd), rtol=1e-6)


def test_unknown_accumulation_is_refused():
    with pytest.raises(ValueError, match="accumulation"):
        optim.make_optimizer(optim.OptimizerConfig(lr=0.1, total_steps=1, accumulation="avg"))
