"""The backbone registry: one entry point for every network of every stage family.

A backbone is a linen module whose `__call__(x [B, H, W, 3], train)` returns the features
`{"stem", "layer1", ..., "layer4"}` (NHWC): the stem after its max-pool (stride 4) and the four
stages (strides 4, 8, min(16, OS), OS for output stride OS in 8 / 16 / 32).
"""

from typing import Any

import jax.numpy as jnp
import ml_collections

from pnoc_jax import config_lib
from pnoc_jax.models import resnet

FEATURE_NAMES = ("stem", "layer1", "layer2", "layer3", "layer4")
OUTPUT_STRIDES = (8, 16, 32)


def backbone_names() -> tuple[str, ...]:
    """Names accepted by `build_backbone`."""
    return tuple(sorted(resnet.RESNET_CONFIGS))


def _check_name(name: str) -> None:
    if name not in backbone_names():
        raise ValueError(f"unknown backbone {name!r}; valid names: {', '.join(backbone_names())}")


def build_backbone(
    arch: str,
    output_stride: int = 16,
    frozen_bn: bool = False,
    dtype: Any = jnp.float32,
    **module_kwargs: Any,
) -> resnet.ResNet:
    """The backbone `arch` ("tiny", "resnet18/34/50/101/152"); ValueError for unknown names.

    `module_kwargs` go to the linen module (e.g. `name="backbone"` inside a parent module).
    """
    _check_name(arch)
    return resnet.ResNet(
        **resnet.RESNET_CONFIGS[arch],
        output_stride=output_stride,
        frozen_bn=frozen_bn,
        dtype=dtype,
        **module_kwargs,
    )


def feature_channels(name: str) -> dict[str, int]:
    """Channel count of each feature returned by the backbone `name`."""
    _check_name(name)
    return resnet.resnet_feature_channels(name)


def feature_strides(output_stride: int) -> dict[str, int]:
    """Stride of each feature, e.g. OS16: stem 4, layer1 4, layer2 8, layer3 16, layer4 16."""
    if output_stride not in OUTPUT_STRIDES:
        raise ValueError(f"output_stride must be one of {OUTPUT_STRIDES}, got {output_stride}")
    return {
        "stem": 4,
        "layer1": 4,
        "layer2": 8,
        "layer3": min(16, output_stride),
        "layer4": output_stride,
    }


def validate_model(config: ml_collections.ConfigDict, topology: config_lib.Topology) -> None:
    """Checks of `config.model`: a known backbone, output stride and weights file."""
    del topology
    config_lib.check_choice(config, "model.backbone", backbone_names())
    config_lib.check_choice(config, "model.output_stride", OUTPUT_STRIDES)
    config_lib.check_file(config, "model.pretrained", "ImageNet weights (.npz)")
