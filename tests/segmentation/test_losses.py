"""Segmentation cross-entropy against torch.nn.functional.cross_entropy (value and gradient)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pnoc_jax.segmentation.losses import cross_entropy

torch = pytest.importorskip("torch", reason="torch is the reference for the loss")


def _torch_loss_and_grad(logits: np.ndarray, labels: np.ndarray, eps: float, ignore: int = 255):
    t = torch.tensor(logits.transpose(0, 3, 1, 2), requires_grad=True)  # NCHW for torch
    loss = torch.nn.functional.cross_entropy(
        t, torch.from_numpy(labels.astype(np.int64)), ignore_index=ignore, label_smoothing=eps
    )
    loss.backward()
    return float(loss.detach()), t.grad.numpy().transpose(0, 2, 3, 1)


def _batch(seed: int, shape=(2, 7, 9), k: int = 6, ignore_frac: float = 0.3):
    rng = np.random.default_rng(seed)
    logits = (3.0 * rng.standard_normal((*shape, k))).astype(np.float32)
    labels = rng.integers(0, k, shape).astype(np.int32)
    labels[rng.random(shape) < ignore_frac] = 255
    return logits, labels


@pytest.mark.parametrize("eps", [0.0, 0.1, 0.3])
@pytest.mark.parametrize("ignore_frac", [0.0, 0.4])
def test_matches_torch(eps: float, ignore_frac: float) -> None:
    logits, labels = _batch(0, ignore_frac=ignore_frac)
    assert (labels == 255).any() == (ignore_frac > 0)
    loss, grad = jax.value_and_grad(cross_entropy)(
        jnp.asarray(logits), jnp.asarray(labels), label_smoothing=eps
    )
    ref_loss, ref_grad = _torch_loss_and_grad(logits, labels, eps)
    assert loss.shape == () and loss.dtype == jnp.float32
    np.testing.assert_allclose(loss, ref_loss, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(grad, ref_grad, rtol=1e-5, atol=1e-7)
    np.testing.assert_array_equal(np.asarray(grad)[labels == 255], 0.0)


def test_ignored_pixels_do_not_count() -> None:
    """Ignored pixels leave the mean over the others unchanged, whatever their logits."""
    logits, labels = _batch(1, ignore_frac=0.5)
    keep = labels != 255
    noisy = logits.copy()
    noisy[~keep] = 1e3 * np.random.default_rng(2).standard_normal(noisy[~keep].shape)
    a = cross_entropy(jnp.asarray(logits), jnp.asarray(labels), label_smoothing=0.1)
    b = cross_entropy(jnp.asarray(noisy), jnp.asarray(labels), label_smoothing=0.1)
    np.testing.assert_allclose(a, b, rtol=1e-6)
    sub = cross_entropy(
        jnp.asarray(logits[keep][None, None]), jnp.asarray(labels[keep][None, None])
    )
    np.testing.assert_allclose(cross_entropy(jnp.asarray(logits), jnp.asarray(labels)), sub, 1e-6)


def test_custom_ignore_index_and_bf16_logits() -> None:
    logits, labels = _batch(3, ignore_frac=0.0)
    labels[0, :2] = 4
    expected, _ = _torch_loss_and_grad(logits, labels, 0.1, ignore=4)
    got = cross_entropy(jnp.asarray(logits), jnp.asarray(labels), 0.1, ignore_index=4)
    np.testing.assert_allclose(got, expected, rtol=1e-6)
    b16 = jnp.asarray(logits, jnp.bfloat16)
    expected16, _ = _torch_loss_and_grad(np.asarray(b16, np.float32), labels, 0.1)
    got16 = cross_entropy(b16, jnp.asarray(labels), 0.1)
    assert got16.dtype == jnp.float32
    np.testing.assert_allclose(got16, expected16, rtol=1e-6)


@pytest.mark.parametrize("eps", [0.0, 0.1])
def test_all_ignored_is_zero_not_nan(eps: float) -> None:
    logits, _ = _batch(4)
    labels = np.full(logits.shape[:-1], 255, np.int32)
    loss, grad = jax.jit(jax.value_and_grad(cross_entropy), static_argnums=2)(
        jnp.asarray(logits), jnp.asarray(labels), eps
    )
    assert float(loss) == 0.0
    np.testing.assert_array_equal(grad, 0.0)
    ref_loss, _ = _torch_loss_and_grad(logits, labels, eps)
    assert np.isnan(ref_loss)  # the documented difference from torch
