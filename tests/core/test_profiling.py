"""The benchmark's profile summary (core.profiling): op kinds from XLA op names, and a traced
step's op times."""

import jax
import jax.numpy as jnp

from pnoc_jax.core import profiling


def test_op_kind_drops_the_instance_number():
    assert profiling.op_kind("ynn_fusion.239") == "ynn_fusion"
    assert profiling.op_kind("transpose_copy_fusion") == "transpose_copy_fusion"
    assert profiling.op_kind("%convolution.3") == "convolution"
    assert profiling.op_kind("wrapped_reduce-window") == "wrapped_reduce-window"


def test_profile_step_sums_the_compiled_ops(tmp_path):
    conv = jax.jit(
        lambda x, w: jnp.tanh(
            jax.lax.conv_general_dilated(
                x, w, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")
            )
        ).sum()
    )
    x, w = jnp.ones((4, 64, 64, 32)), jnp.full((3, 3, 32, 32), 0.01)
    conv(x, w).block_until_ready()
    result = profiling.profile_step(lambda: conv(x, w), str(tmp_path / "trace"))
    assert result["profile_ops_s"] > 0, result
    kinds = result["profile_by_kind"]
    assert kinds and abs(sum(s for s, _ in kinds.values()) - result["profile_ops_s"]) < 1e-3
    assert abs(sum(f for _, f in kinds.values()) - 1.0) < 1e-2
    assert all(
        not name.startswith(("Thunk", "Pjit", "Wait", "$")) for name in result["profile_top_ops"]
    )
