"""resize_bilinear / rescale_bilinear against torch.nn.functional.interpolate (no antialias)."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest

from pnoc_jax.models.resize import rescale_bilinear, rescaled_size, resize_bilinear

torch = pytest.importorskip("torch", reason="torch is the reference for bilinear resizing")
F = torch.nn.functional

# (input H, W) -> (output H, W): up, down, mixed, identity, to and from a single pixel.
SIZES = [
    ((5, 7), (11, 13)),
    ((5, 7), (16, 28)),
    ((23, 17), (5, 7)),
    ((32, 32), (9, 16)),
    ((6, 10), (13, 3)),
    ((7, 9), (7, 9)),
    ((8, 6), (1, 1)),
    ((1, 1), (4, 5)),
    ((1, 6), (3, 1)),
]


def _torch(x: np.ndarray, align_corners: bool, dtype=None, **kwargs) -> np.ndarray:
    t = torch.from_numpy(x.transpose(0, 3, 1, 2).copy())
    if dtype is not None:
        t = t.to(dtype)
    out = F.interpolate(t, mode="bilinear", align_corners=align_corners, **kwargs)
    return out.float().numpy().transpose(0, 2, 3, 1)


@pytest.mark.parametrize("align_corners", [False, True])
@pytest.mark.parametrize(("in_size", "out_size"), SIZES)
def test_matches_torch_float32(in_size, out_size, align_corners: bool) -> None:
    x = np.random.default_rng(0).standard_normal((2, *in_size, 3)).astype(np.float32)
    out = resize_bilinear(jnp.asarray(x), out_size, align_corners=align_corners)
    ref = _torch(x, align_corners, size=out_size)
    assert out.shape == ref.shape and out.dtype == jnp.float32
    np.testing.assert_allclose(out, ref, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("align_corners", [False, True])
def test_matches_torch_bfloat16(align_corners: bool) -> None:
    x = np.random.default_rng(1).standard_normal((1, 9, 14, 4)).astype(np.float32)
    xb = jnp.asarray(x, jnp.bfloat16)
    exact = np.asarray(xb, np.float32)  # the bf16 values both sides start from
    for out_size in [(20, 31), (4, 5)]:
        out = resize_bilinear(xb, out_size, align_corners=align_corners)
        assert out.dtype == jnp.bfloat16
        ref = _torch(exact, align_corners, dtype=torch.bfloat16, size=out_size)
        # Same float32 arithmetic, then one rounding to bf16: at most one bf16 ulp apart.
        np.testing.assert_allclose(np.asarray(out, np.float32), ref, rtol=2**-7, atol=1e-6)
        ref32 = _torch(exact, align_corners, size=out_size)
        np.testing.assert_allclose(np.asarray(out, np.float32), ref32, rtol=2**-8, atol=1e-6)


@pytest.mark.parametrize("align_corners", [False, True])
@pytest.mark.parametrize("scale", [0.5, 0.75, 1.2, 2.0])
def test_rescale_matches_torch_scale_factor(scale: float, align_corners: bool) -> None:
    """scale_factor semantics: ⌊n·s⌋ outputs and a 1/s sampling step (not n / ⌊n·s⌋)."""
    x = np.random.default_rng(2).standard_normal((1, 21, 27, 2)).astype(np.float32)
    out = rescale_bilinear(jnp.asarray(x), scale, align_corners=align_corners)
    ref = _torch(x, align_corners, scale_factor=scale)
    assert out.shape == ref.shape
    assert out.shape[1:3] == rescaled_size((21, 27), scale)
    np.testing.assert_allclose(out, ref, rtol=1e-6, atol=1e-6)
    if not align_corners and scale == 0.75:  # the step differs from resizing to the same size
        by_size = resize_bilinear(jnp.asarray(x), out.shape[1:3], align_corners=False)
        assert not np.allclose(by_size, ref, atol=1e-3)


def test_no_antialias_on_downsampling() -> None:
    """2× down with align_corners=False averages exactly the two middle taps, nothing wider."""
    x = np.zeros((1, 8, 1, 1), np.float32)
    x[0, 3, 0, 0] = 1.0
    out = resize_bilinear(jnp.asarray(x), (4, 1), align_corners=False)
    np.testing.assert_array_equal(np.asarray(out)[0, :, 0, 0], [0.0, 0.5, 0.0, 0.0])


def test_rejects_bad_shapes() -> None:
    with pytest.raises(ValueError, match=r"\[B, H, W, C\]"):
        resize_bilinear(jnp.zeros((4, 4, 3)), (2, 2), align_corners=True)
    with pytest.raises(ValueError, match="positive"):
        resize_bilinear(jnp.zeros((1, 4, 4, 3)), (0, 2), align_corners=True)
