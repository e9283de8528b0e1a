"""The backbone registry: one entry point for every network of every stage family.

A backbone is a linen module whose `__call__(x [B, H, W, 3], train)` returns the features
`{"stem", "layer1", ..., "layer4"}` (NHWC): the stem after its max-pool (stride 4) and the four
stages (strides 4, 8, min(16, OS), OS for output stride OS in 8 / 16 / 32).
"""

import dataclasses
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging

from pnoc_jax import config_lib
from pnoc_jax.core import artifacts, fileio, weights
from pnoc_jax.models import resnest, resnet

FEATURE_NAMES = ("stem", "layer1", "layer2", "layer3", "layer4")
OUTPUT_STRIDES = (8, 16, 32)

# The ImageNet weights the reference loads (method.md §2): torchvision's original (V1) ResNets and
# the ResNeSt authors' release; the hex in each name is the start of the file's SHA-256, which
# `python -m pnoc_jax.models.convert` checks.
IMAGENET_WEIGHTS = {
    "resnet18": "https://download.pytorch.org/models/resnet18-5c106cde.pth",
    "resnet34": "https://download.pytorch.org/models/resnet34-333f7ec4.pth",
    "resnet50": "https://download.pytorch.org/models/resnet50-19c8e357.pth",
    "resnet101": "https://download.pytorch.org/models/resnet101-5d3b4d8f.pth",
    "resnet152": "https://download.pytorch.org/models/resnet152-b121ed2d.pth",
    **{
        f"resnest{depth}": "https://github.com/zhanghang1989/ResNeSt/releases/download/"
        f"weights_step1/resnest{depth}-{digest}.pth"
        for depth, digest in (
            (50, "528c19ca"), (101, "22405ba7"), (200, "75117900"), (269, "0cc87c48")
        )
    },
}  # fmt: skip


def weights_help(arch: str) -> str:
    """Where the ImageNet weights of `arch` come from and the command that converts them."""
    url = IMAGENET_WEIGHTS.get(arch)
    if url is None:
        return f"no ImageNet weights are published for {arch!r}"
    name = url.rsplit("/", 1)[1]
    return (
        f"download {url} and convert it: python -m pnoc_jax.models.convert --torch_checkpoint "
        f"{name} --arch {arch} --out {arch}.npz (needs torch; checks the file's SHA-256), then "
        f"pass --config.model.pretrained={arch}.npz"
    )


def backbone_names() -> tuple[str, ...]:
    """Names accepted by `build_backbone`: torchvision ResNets and ResNeSts."""
    return tuple(sorted((*resnet.RESNET_CONFIGS, *resnest.RESNEST_CONFIGS)))


def _check_name(name: str) -> None:
    if name not in backbone_names():
        raise ValueError(f"unknown backbone {name!r}; valid names: {', '.join(backbone_names())}")


def build_backbone(
    arch: str,
    output_stride: int = 16,
    frozen_bn: bool = False,
    dtype: Any = jnp.float32,
    **module_kwargs: Any,
) -> nn.Module:
    """The backbone `arch` ("tiny", "resnet18/34/50/101/152", "resnest50/101/200/269",
    "resnest_tiny"); ValueError for unknown names.

    `module_kwargs` go to the linen module (e.g. `name="backbone"` inside a parent module).
    """
    _check_name(arch)
    if arch in resnest.RESNEST_CONFIGS:
        module, fields = resnest.ResNeSt, resnest.RESNEST_CONFIGS[arch]
    else:
        module, fields = resnet.ResNet, resnet.RESNET_CONFIGS[arch]
    return module(
        **fields, output_stride=output_stride, frozen_bn=frozen_bn, dtype=dtype, **module_kwargs
    )


def backbone_features(net: nn.Module, x: jax.Array, train: bool) -> dict[str, jax.Array]:
    """The features of `x` by the backbone submodule "backbone" of `net`, a network module
    with the fields `backbone` (its name), `output_stride`, `frozen_bn`, `dtype` and `remat`;
    called from `net`'s compact `__call__`."""
    return build_backbone(
        net.backbone, net.output_stride, net.frozen_bn, net.dtype, remat=net.remat,
        name="backbone",
    )(x, train=train)  # fmt: skip


def load_backbone(
    arch: str, npz_path: str, output_stride: int = 16, frozen_bn: bool = True
) -> tuple[nn.Module, dict]:
    """`(module, variables)` of a backbone with converted weights, for notebooks and tools.

    `module.apply(variables, x_nhwc, train=False)` returns the features dict. `npz_path` is a
    file from `python -m pnoc_jax.models.convert` (or a stage's exported weights, whose
    `backbone` part is used); every shape is checked against the architecture.
    """
    module = build_backbone(arch, output_stride, frozen_bn)
    x = jnp.zeros((1, 64, 64, 3))
    shapes = jax.eval_shape(lambda: module.init(jax.random.key(0), x, train=False))
    fresh = jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), shapes)
    loaded = weights.load(npz_path)
    subset = {col: tree["backbone"] for col, tree in loaded.items() if "backbone" in tree}
    if not subset:
        raise KeyError(f"{npz_path}: no backbone weights (expected params/backbone/...)")
    return module, weights.merge(fresh, subset)


def feature_channels(name: str) -> dict[str, int]:
    """Channel count of each feature returned by the backbone `name`."""
    _check_name(name)
    if name in resnest.RESNEST_CONFIGS:
        return resnest.resnest_feature_channels(name)
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


TRAINED_SOURCES = ("train_oc", "train_cam")  # stages whose classifier backbone can start one
BACKBONE_SOURCES = ("pretrained", *TRAINED_SOURCES)  # the values of `<section>.backbone_weights`


def imagenet_weights(
    config: ml_collections.ConfigDict, section: str, arch: str, fallback: bool = True
) -> tuple[str, str]:
    """(path as configured, its config key) of the ImageNet weights of a section's `arch`
    backbone: `<section>.pretrained` when set; else, with `fallback` and when `arch` is the
    CAM network's, `model.pretrained`; else none ("", the key that would name it)."""
    has_own = "pretrained" in config[section]
    own_key = f"{section}.pretrained" if has_own else "model.pretrained"
    if has_own and config[section].pretrained:
        return config[section].pretrained, own_key
    if fallback and arch == config.model.backbone:
        return config.model.pretrained, "model.pretrained"
    return "", own_key


@dataclasses.dataclass(frozen=True)
class BackboneStart:
    """Where one stage's network starts its backbone, resolved from the config once.

    `source` is "pretrained" (ImageNet weights `pretrained`, named by the key `pretrained_key`;
    "" = random) or a trained classifier's stage ("train_oc" / "train_cam", a stand-in for
    ImageNet weights where none exist); `choice_key` is the config key that chose it.
    `trained_weights` replaces the source stage's exported file (a user's own classifier), which
    is then no dependency of the stage.
    """

    stage: str
    arch: str
    source: str
    choice_key: str
    pretrained: str = ""
    pretrained_key: str = "model.pretrained"
    trained_weights: str = ""

    @classmethod
    def from_section(
        cls,
        config: ml_collections.ConfigDict,
        stage: str,
        section: str,
        arch: str,
        fallback: bool = True,
    ) -> "BackboneStart":
        """The start chosen by `<section>.backbone_weights` (with `imagenet_weights`)."""
        pretrained, key = imagenet_weights(config, section, arch, fallback)
        return cls(
            stage=stage,
            arch=arch,
            source=config[section].backbone_weights,
            choice_key=f"{section}.backbone_weights",
            pretrained=pretrained,
            pretrained_key=key,
        )

    @property
    def trained(self) -> bool:
        return self.source in TRAINED_SOURCES

    def deps(self) -> tuple[str, ...]:
        """The stage whose exported weights it reads, if any."""
        return (self.source,) if self.trained and not self.trained_weights else ()

    def path(self, workdir: str) -> str:
        """The weights file it loads ("~" expanded), or "" for random weights."""
        if self.trained and self.trained_weights:
            return fileio.expand(self.trained_weights)
        if self.trained:
            return artifacts.weights_file(workdir, self.source)
        return fileio.expand(self.pretrained) if self.pretrained else ""

    def validate(self, config: ml_collections.ConfigDict, needs_pretrained: bool) -> None:
        """ConfigError unless the start can work: an existing ImageNet file, ImageNet weights
        on natural images (unless `model.allow_random_init`), and a trained classifier's
        backbone only for the CAM network's architecture. (The caller checks which sources
        its `choice_key` admits.)"""
        if self.pretrained_key != "model.pretrained":
            config_lib.check_file(config, self.pretrained_key, "ImageNet weights (.npz)")
        if self.source == "pretrained" and needs_pretrained:
            config_lib.check(
                bool(self.pretrained) or config.model.allow_random_init,
                self.pretrained_key,
                config_lib.get(config, self.pretrained_key),
                f"ImageNet weights of {self.arch} for {self.stage} (the paper's numbers need "
                f"them): {weights_help(self.arch)}; or set --config.model.allow_random_init=True "
                "to train from random weights on purpose",
            )
        if self.trained:
            config_lib.check(
                self.arch == config.model.backbone,
                self.choice_key,
                self.source,
                f"'pretrained' for backbone {self.arch!r}: {self.source} trains "
                f"config.model.backbone={config.model.backbone!r}",
            )

    def initializer(
        self, workdir: str | None, model: nn.Module, input_shape: tuple[int, ...]
    ) -> Callable[[dict], dict] | None:
        """The initializer of `model`'s backbone (checked against `model` now: a file of another
        architecture is a `weights.WeightsError` naming it), or None with a warning: random.
        `workdir` None (a program compiled for planning): None, no file read."""
        if workdir is None:
            return None
        path = self.path(workdir)
        if not path:
            logging.warning(
                "%s: no ImageNet weights for its %s backbone (config.%s): RANDOM backbone",
                self.stage,
                self.arch,
                self.pretrained_key,
            )
            return None
        what = f"a {self.arch} backbone (config.{self.choice_key}={self.source!r})"
        return weights.checked_initializer(path, model, input_shape, what)
