"""resize_bicubic against torch ``F.interpolate(mode="bicubic", align_corners=False)``."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="torch is the bicubic reference")

from pnoc_jax.models.resize import resize_bicubic  # noqa: E402


def _torch_bicubic(x_nhwc: np.ndarray, size) -> np.ndarray:
    t = torch.from_numpy(x_nhwc.transpose(0, 3, 1, 2))
    out = torch.nn.functional.interpolate(t, size=size, mode="bicubic", align_corners=False)
    return out.numpy().transpose(0, 2, 3, 1)


@pytest.mark.parametrize(
    ("in_size", "out_size"),
    [
        ((448, 448), (28, 28)),  # C²AM-H hints: image size -> stride-16 logits
        ((7, 5), (16, 13)),  # upsampling, odd sizes
        ((37, 53), (11, 29)),  # downsampling by non-integer factors
        ((9, 31), (20, 6)),  # up along H, down along W
        ((1, 4), (3, 1)),  # degenerate axes: every tap clamps to the border
        ((6, 6), (6, 6)),  # identity
    ],
)
def test_matches_torch(in_size, out_size) -> None:
    rng = np.random.default_rng(sum(in_size) + sum(out_size))
    x = rng.standard_normal((2, *in_size, 3)).astype(np.float32)
    ref = _torch_bicubic(x, out_size)
    got = np.asarray(jax.jit(resize_bicubic, static_argnums=1)(jnp.asarray(x), out_size))
    assert got.shape == ref.shape
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5)


def test_three_dim_input_dtype_and_overshoot() -> None:
    """[B, H, W] maps (the hints) work; bf16 stays bf16; the kernel overshoots like torch's."""
    x = np.zeros((1, 8, 8), np.float32)
    x[0, 3:5, 3:5] = 1.0  # a small block: a = -0.75 rings below 0 and peaks above 1
    got = np.asarray(resize_bicubic(jnp.asarray(x), (21, 19)))
    ref = _torch_bicubic(x[..., None], (21, 19))[..., 0]
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-6)
    assert got.min() < 0.0
    # JAX's own cubic (a = -0.5, antialiased, border-renormalised) is measurably different.
    jax_cubic = jax.image.resize(jnp.asarray(x), (1, 21, 19), "cubic")
    assert np.abs(np.asarray(jax_cubic) - ref).max() > 1e-2
    half = resize_bicubic(jnp.asarray(x, jnp.bfloat16), (4, 4))
    assert half.dtype == jnp.bfloat16


def test_rejects_bad_shapes() -> None:
    with pytest.raises(ValueError, match="B, H, W"):
        resize_bicubic(jnp.zeros((4, 4)), (2, 2))
    with pytest.raises(ValueError, match="positive"):
        resize_bicubic(jnp.zeros((1, 4, 4)), (0, 2))
