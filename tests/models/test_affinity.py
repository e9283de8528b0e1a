"""AffinityNet: output grid, feature strides, and which parameters can learn."""

import jax
import jax.numpy as jnp
import pytest

from pnoc_jax.core import optim
from pnoc_jax.models.affinity import AffinityNet
from pnoc_jax.models.backbones import feature_strides


@pytest.mark.parametrize("output_stride", [16, 8])
def test_affinity_net_shape_and_stride(output_stride):
    model = AffinityNet("tiny", output_stride=output_stride)
    x = jax.ShapeDtypeStruct((2, 50, 72, 3), jnp.float32)
    variables = jax.eval_shape(lambda x: model.init(jax.random.key(0), x), x)
    out = jax.eval_shape(model.apply, variables, x)
    assert out.shape == (2, 13, 18) and out.dtype == jnp.float32  # ⌈50/4⌉, ⌈72/4⌉
    strides = feature_strides(output_stride)
    assert strides == {
        "stem": 4,
        "layer1": 4,
        "layer2": 8,
        "layer3": output_stride,
        "layer4": output_stride,
    }
    params = variables["params"]
    edge = {f"edge{i}" for i in range(1, 6)} | {f"gn{i}" for i in range(1, 6)} | {"edge_out"}
    assert set(params) - {"backbone"} == edge
    assert params["edge1"]["kernel"].shape == (1, 1, 16, 32) and "bias" not in params["edge1"]
    assert params["edge_out"]["kernel"].shape == (1, 1, 160, 1) and "bias" in params["edge_out"]
    groups = optim.param_labels(params, frozen=("backbone",))
    assert set(jax.tree.leaves(groups["backbone"])) == {"frozen"}
    assert "frozen" not in jax.tree.leaves({k: v for k, v in groups.items() if k != "backbone"})
