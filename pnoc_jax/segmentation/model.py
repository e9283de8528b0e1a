"""The segmentation network as a file and as a predictor: `weights/model.json` (`ModelSpec`, the
architecture that `infer_segmentation` and `python -m pnoc_jax.predict` rebuild) and the batch
predictor of a trained network on this process's devices (method.md §10, test time)."""

import dataclasses

import flax.linen as nn
import jax.numpy as jnp
import ml_collections

from pnoc_jax.core import fileio, weights
from pnoc_jax.data import datasets
from pnoc_jax.inference import dense, predictor
from pnoc_jax.models.deeplab import DeepLabV2, DeepLabV3Plus

MODELS = ("deeplabv3plus", "deeplabv2")


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """Everything needed to rebuild a trained segmentation network: `weights/model.json`."""

    model: str  # "deeplabv3plus" | "deeplabv2"
    backbone: str
    num_classes: int  # output channels, background included
    output_stride: int
    atrous_rates: tuple[int, ...]  # () = the model's default
    head_channels: int
    low_level_channels: int
    class_names: tuple[str, ...]  # background first
    dataset: str

    def build(
        self, frozen_bn: bool = True, dtype: str = "float32", remat: bool = False
    ) -> nn.Module:
        dt = jnp.dtype(dtype)
        if self.model == "deeplabv2":
            kwargs = {"atrous_rates": self.atrous_rates} if self.atrous_rates else {}
            return DeepLabV2(
                self.backbone, self.num_classes, self.output_stride, frozen_bn, dt,
                remat=remat, **kwargs,
            )  # fmt: skip
        return DeepLabV3Plus(
            self.backbone,
            self.num_classes,
            self.output_stride,
            frozen_bn,
            dt,
            atrous_rates=self.atrous_rates or None,
            head_channels=self.head_channels,
            low_level_channels=self.low_level_channels,
            remat=remat,
        )

    def to_json(self) -> dict:
        return {**dataclasses.asdict(self), "format": 1}

    @classmethod
    def read(cls, path: str) -> "ModelSpec":
        """The spec in `path`; a ValueError naming the file if it is not one."""
        try:
            record = fileio.read_json(path)
        except FileNotFoundError:
            raise FileNotFoundError(
                f"{path}: missing; a segmentation weights file needs the model.json written "
                "beside it by train_segmentation"
            ) from None
        names = {f.name for f in dataclasses.fields(cls)}
        if not isinstance(record, dict) or not names <= set(record):
            raise ValueError(f"{path}: not a segmentation model description (keys {sorted(names)})")
        values = {n: record[n] for n in names}
        for key in ("atrous_rates", "class_names"):
            values[key] = tuple(values[key])
        return cls(**values)


def model_spec(config: ml_collections.ConfigDict) -> ModelSpec:
    cfg = config.segmentation
    info = datasets.get_info(config.data.name)
    return ModelSpec(
        model=cfg.model,
        backbone=cfg.backbone or config.model.backbone,
        num_classes=info.num_classes + 1,
        output_stride=cfg.output_stride,
        atrous_rates=tuple(cfg.atrous_rates),
        head_channels=cfg.head_channels,
        low_level_channels=cfg.low_level_channels,
        class_names=("background", *info.class_names),
        dataset=config.data.name,
    )


def inference_fn(model: nn.Module) -> dense.DenseFn:
    """`(variables, (images [N, S, S, 3], valid [N, S, S])) -> logits [N, S, S, K]` in inference
    mode: DeepLabV3+ (image pooling over `valid`) or DeepLabV2's MSC-fused `predict`."""
    if isinstance(model, DeepLabV2):
        return lambda v, batch: model.apply(v, batch[0], method="predict")
    return lambda v, batch: model.apply(v, batch[0], train=False, valid=batch[1])


def load_predictor(spec: ModelSpec, weights_path: str) -> tuple[dense.DensePredict, int]:
    """The trained network `spec` with the weights file `weights_path` as a batch predictor on
    this process's devices, and the batch multiple it needs. Weights of another network (e.g.
    a classifier's beside a model.json) are a `weights.WeightsError` naming the file."""
    model = spec.build()
    what = f"the weights of a {spec.model} on {spec.backbone} as its model.json describes"
    variables = weights.load_checked(weights_path, model, (1, 64, 64, 3), what)
    return predictor.local_predictor(inference_fn(model), variables)
