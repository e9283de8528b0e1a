"""C²AM / C²AM-H losses against hand-worked values, brute-force NumPy loops and torch."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pnoc_jax.saliency import losses
from tests.oracles import numpy_saliency as brute

torch = pytest.importorskip("torch", reason="torch transcriptions of the reference losses")

from tests.oracles import torch_ccam  # noqa: E402

ALPHA = 0.25


def _embeddings(seed: int, shape=(6, 5)) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def test_sim_max_loss_hand_worked_3x3() -> None:
    # cos(x0, x1) = 0.6, cos(x1, x2) = 0.8, cos(x0, x2) = 0 -> clamped to 0.0005; self 1 -> 0.9995.
    x = jnp.array([[1.0, 0.0], [0.6, 0.8], [0.0, 1.0]])
    # Rows of S: [.9995 .6 .0005], [.6 .9995 .8], [.0005 .8 .9995]. Descending ranks minus one:
    # [-1 0 1], [1 -1 0], [1 0 -1]; weights exp(-0.25 * rank).
    expected_ranks = np.array([[0, 1, 2], [2, 0, 1], [2, 1, 0]])
    sim = losses.cosine_similarity(x, x)
    np.testing.assert_array_equal(losses.descending_ranks(sim), expected_ranks)
    nl = lambda s: -math.log(s)
    e = math.exp
    by_hand = (
        3 * e(ALPHA) * nl(0.9995)  # the three self-pairs, rank -1
        + (1 + e(-ALPHA)) * nl(0.6)  # (0, 1) at rank 0, (1, 0) at rank 1
        + 2 * nl(0.8)  # (1, 2) and (2, 1) at rank 0
        + 2 * e(-ALPHA) * nl(0.0005)  # (0, 2) and (2, 0) at rank 1
    ) / 9
    assert float(losses.sim_max_loss(x, ALPHA)) == pytest.approx(by_hand, rel=1e-5)


def test_ties_break_by_column_index_like_a_stable_torch_sort() -> None:
    """Rows 0 and 1 coincide: S01 = S10 = S00 = S11 = 0.9995, so row 1's self-pair ranks second."""
    x = np.array([[1.0, 2.0, 0.5], [1.0, 2.0, 0.5], [0.3, -1.0, 2.0], [1.0, 2.0, 0.6]], np.float32)
    sim = np.asarray(losses.cosine_similarity(jnp.asarray(x), jnp.asarray(x)))
    assert sim[0, 1] == sim[1, 1] == np.float32(0.9995)
    ranks = np.asarray(losses.descending_ranks(jnp.asarray(sim)))
    assert ranks[1, 0] == 0 and ranks[1, 1] == 1  # the self-pair loses the tie to column 0
    for i in range(4):
        for j in range(4):
            assert ranks[i, j] == brute.descending_rank(sim[i], j), (i, j)
    got = float(losses.sim_max_loss(jnp.asarray(x), ALPHA))
    assert got == pytest.approx(brute.sim_max_loss(x, ALPHA), rel=1e-5)
    ref = torch_ccam.sim_max_loss(torch.from_numpy(x), ALPHA, stable=True).item()
    assert got == pytest.approx(ref, rel=1e-6)


@pytest.mark.parametrize("seed", [0, 1])
def test_sim_losses_match_brute_force_and_torch(seed: int) -> None:
    fg, bg = _embeddings(seed), _embeddings(seed + 10)
    fg[2] = 0.0  # a zero row: F.normalize's eps keeps it finite, similarity clamps to 0.0005
    bg[:, :2] = np.abs(bg[:, :2])
    max_fg = float(losses.sim_max_loss(jnp.asarray(fg), ALPHA))
    max_bg = float(losses.sim_max_loss(jnp.asarray(bg), ALPHA))
    min_bf = float(losses.sim_min_loss(jnp.asarray(bg), jnp.asarray(fg)))
    assert max_fg == pytest.approx(brute.sim_max_loss(fg, ALPHA), rel=1e-5)
    assert max_bg == pytest.approx(brute.sim_max_loss(bg, ALPHA), rel=1e-5)
    assert min_bf == pytest.approx(brute.sim_min_loss(bg, fg), rel=1e-5)
    tfg, tbg = torch.from_numpy(fg), torch.from_numpy(bg)
    assert max_fg == pytest.approx(torch_ccam.sim_max_loss(tfg, ALPHA).item(), rel=1e-6)
    assert min_bf == pytest.approx(torch_ccam.sim_min_loss(tbg, tfg).item(), rel=1e-6)


def test_sim_min_loss_is_not_symmetric_in_its_arguments() -> None:
    bg, fg = _embeddings(3, (4, 3)), _embeddings(4, (5, 3))  # B' != B works too
    got = float(losses.sim_min_loss(jnp.asarray(bg), jnp.asarray(fg)))
    assert got == pytest.approx(brute.sim_min_loss(bg, fg), rel=1e-5)


def test_gradients_are_finite_and_match_torch() -> None:
    fg, bg = _embeddings(5), _embeddings(6)
    fg[1] = fg[0]  # a tie at the clamp
    bg[3] = 0.0  # a zero row

    def total(fg, bg):
        return (
            losses.sim_max_loss(fg, ALPHA)
            + losses.sim_min_loss(bg, fg)
            + losses.sim_max_loss(bg, ALPHA)
        )

    g_fg, g_bg = jax.jit(jax.grad(total, argnums=(0, 1)))(jnp.asarray(fg), jnp.asarray(bg))
    assert np.isfinite(g_fg).all() and np.isfinite(g_bg).all()
    tfg = torch.from_numpy(fg).requires_grad_()
    tbg = torch.from_numpy(bg).requires_grad_()
    ref = (
        torch_ccam.sim_max_loss(tfg, ALPHA)
        + torch_ccam.sim_min_loss(tbg, tfg)
        + torch_ccam.sim_max_loss(tbg, ALPHA)
    )
    ref.backward()
    np.testing.assert_allclose(g_fg, tfg.grad.numpy(), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(g_bg, tbg.grad.numpy(), rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_hint_loss_matches_brute_force_and_torch(smoothing: float) -> None:
    rng = np.random.default_rng(7)
    z = (3 * rng.standard_normal((3, 5, 4))).astype(np.float32)
    hints = rng.uniform(0, 1, (3, 5, 4)).astype(np.float32)
    hints[0, 0, 0] = 0.4  # on the threshold: selected (>=)
    got = float(losses.hint_loss(jnp.asarray(z), jnp.asarray(hints), 0.4, smoothing))
    assert got == pytest.approx(brute.hint_loss(z, hints, 0.4, smoothing), rel=1e-5)
    ref = torch_ccam.hint_loss(torch.from_numpy(z), torch.from_numpy(hints), 0.4, smoothing)
    assert got == pytest.approx(ref.item(), rel=1e-6)


def test_hint_loss_empty_mask_is_zero_with_zero_gradient() -> None:
    z = jnp.asarray(np.random.default_rng(8).standard_normal((2, 3, 3)), jnp.float32)
    hints = jnp.full((2, 3, 3), 0.1)
    value, grad = jax.value_and_grad(losses.hint_loss)(z, hints, 0.4, 0.1)
    assert float(value) == 0.0
    np.testing.assert_array_equal(grad, 0.0)
    # The reference's mean over an empty selection is NaN: the documented deviation.
    ref = torch_ccam.hint_loss(torch.from_numpy(np.array(z)), torch.zeros(2, 3, 3), 0.4, 0.1)
    assert math.isnan(ref.item())


def test_hint_loss_gradient_only_on_masked_pixels() -> None:
    z = jnp.zeros((1, 2, 2))
    hints = jnp.array([[[0.9, 0.0], [0.5, 0.39]]])
    grad = np.asarray(jax.grad(losses.hint_loss)(z, hints, 0.4, 0.1))
    # d/dz BCE(z, t) = σ(z) − t = 0.5 − 0.95, divided by the 2 selected pixels.
    np.testing.assert_allclose(grad, [[[-0.225, 0.0], [-0.225, 0.0]]], rtol=1e-6)


def test_resize_hints_is_torch_bicubic() -> None:
    hints = np.random.default_rng(9).uniform(0, 1, (2, 448, 448)).astype(np.float32)
    got = np.asarray(jax.jit(losses.resize_hints, static_argnums=1)(jnp.asarray(hints), (28, 28)))
    ref = torch.nn.functional.interpolate(
        torch.from_numpy(hints)[:, None], (28, 28), mode="bicubic", align_corners=False
    )[:, 0].numpy()
    assert got.shape == (2, 28, 28) and got.dtype == np.float32
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-6)
