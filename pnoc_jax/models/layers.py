"""Layers built as the PyTorch reference builds them, shared by every network.

`conv` pads like torch (`dilation * (kernel - 1) // 2` on each side, so odd input sizes give
torch's output sizes); `batch_norm` has torch's defaults (momentum 0.1 = flax 0.9, eps 1e-5).
Parameters are float32 whatever the compute dtype.
"""

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

# torchvision's backbone convs: kaiming_normal_(mode="fan_out", nonlinearity="relu").
KAIMING_FAN_OUT = nn.initializers.variance_scaling(2.0, "fan_out", "normal")
# torch.nn.init.kaiming_normal_ defaults (fan_in, gain sqrt(2)): the reference's new heads.
KAIMING_FAN_IN = nn.initializers.variance_scaling(2.0, "fan_in", "normal")

BN_MOMENTUM = 0.9
BN_EPSILON = 1e-5


def conv(
    features: int,
    kernel: int,
    dtype: Any,
    name: str,
    stride: int = 1,
    dilation: int = 1,
    groups: int = 1,
    use_bias: bool = False,
    kernel_init: Any = KAIMING_FAN_OUT,
    **kwargs: Any,
) -> nn.Conv:
    """A square conv with torch-style symmetric padding `dilation * (kernel - 1) // 2`."""
    pad = dilation * (kernel - 1) // 2
    return nn.Conv(
        features,
        (kernel, kernel),
        strides=(stride, stride),
        padding=((pad, pad), (pad, pad)),
        kernel_dilation=(dilation, dilation),
        feature_group_count=groups,
        use_bias=use_bias,
        kernel_init=kernel_init,
        dtype=dtype,
        param_dtype=jnp.float32,
        name=name,
        **kwargs,
    )


def batch_norm(use_running_average: bool, dtype: Any, name: str) -> nn.BatchNorm:
    """BatchNorm with torch's defaults; params and statistics in float32."""
    return nn.BatchNorm(
        use_running_average=use_running_average,
        momentum=BN_MOMENTUM,
        epsilon=BN_EPSILON,
        dtype=dtype,
        param_dtype=jnp.float32,
        name=name,
    )
