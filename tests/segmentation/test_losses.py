"""Segmentation cross-entropy against torch.nn.functional.cross_entropy (value and gradient) and
against an independent NumPy version; DeepLabV2's label resize (PIL nearest) and MSC loss."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pnoc_jax.segmentation.losses import cross_entropy, msc_cross_entropy, nearest_resize_labels

try:
    import torch
except ImportError:  # the NumPy versions below still run
    torch = None
needs_torch = pytest.mark.skipif(torch is None, reason="torch is the reference for the loss")


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


@needs_torch
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


@needs_torch
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


@needs_torch
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


# --- independent NumPy versions (no torch needed) -------------------------------------------


def _numpy_cross_entropy(logits: np.ndarray, labels: np.ndarray, eps: float) -> float:
    """Pixel by pixel in float64: smoothed target q = (1 − ε)·onehot + ε/K, loss = −Σ q log p,
    averaged over the pixels whose label is not 255."""
    k = logits.shape[-1]
    total, count = 0.0, 0
    for index in np.ndindex(labels.shape):
        if labels[index] == 255:
            continue
        z = logits[index].astype(np.float64)
        log_p = z - z.max() - np.log(np.sum(np.exp(z - z.max())))
        target = np.full(k, eps / k)
        target[labels[index]] += 1.0 - eps
        total += -np.sum(target * log_p)
        count += 1
    return total / count


@pytest.mark.parametrize("eps", [0.0, 0.1, 0.25])
def test_matches_a_numpy_version(eps: float) -> None:
    logits, labels = _batch(3, shape=(2, 5, 6), k=4, ignore_frac=0.3)
    assert (labels == 255).any()
    loss = cross_entropy(jnp.asarray(logits), jnp.asarray(labels), label_smoothing=eps)
    assert float(loss) == pytest.approx(_numpy_cross_entropy(logits, labels, eps), rel=1e-5)


def test_uint8_labels_as_the_pipeline_feeds_them() -> None:
    logits, labels = _batch(4, ignore_frac=0.2)
    a = cross_entropy(jnp.asarray(logits), jnp.asarray(labels.astype(np.uint8)), 0.1)
    b = cross_entropy(jnp.asarray(logits), jnp.asarray(labels), 0.1)
    assert float(a) == pytest.approx(float(b), rel=1e-6)


@pytest.mark.parametrize(
    ("size", "out"), [((13, 17), (4, 6)), ((7, 9), (12, 5)), ((32, 32), (8, 8))]
)
def test_nearest_resize_matches_pil(size, out) -> None:
    from PIL import Image

    labels = np.random.default_rng(5).integers(0, 21, (2, *size)).astype(np.uint8)
    resized = np.asarray(nearest_resize_labels(jnp.asarray(labels), out))
    for b in range(2):
        expected = np.asarray(Image.fromarray(labels[b]).resize(out[::-1], Image.NEAREST))
        np.testing.assert_array_equal(resized[b], expected)


def test_msc_loss_sums_the_outputs_against_resized_labels() -> None:
    rng = np.random.default_rng(6)
    labels = rng.integers(0, 5, (2, 16, 16)).astype(np.int32)
    outputs = tuple(
        jnp.asarray(rng.standard_normal((2, s, s, 5)).astype(np.float32)) for s in (4, 2, 3, 4)
    )
    expected = sum(
        _numpy_cross_entropy(
            np.asarray(o), np.asarray(nearest_resize_labels(jnp.asarray(labels), o.shape[1:3])), 0.1
        )
        for o in outputs
    )
    assert float(msc_cross_entropy(outputs, jnp.asarray(labels), 0.1)) == pytest.approx(
        expected, rel=1e-5
    )
