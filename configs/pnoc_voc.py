r"""Priors on Pascal VOC 2012 (spec §1 runner 1): train, CAM inference with TTA, evaluation.

    python -m pnoc_jax.main --config configs/pnoc_voc.py --workdir runs/voc \
        --config.data.manual_dir=/data/VOCdevkit --config.model.pretrained=resnet101.npz

Trained on train_aug (10582), evaluated on train (1464), as in the paper.
Deviation: ResNet-101 (torchvision structure) instead of ResNeSt-269.
"""

from pnoc_jax import config_lib


def get_config(arg: str | None = None):
    args = config_lib.parse_arg(arg, strategy="cam", backbone="resnet101")
    config = config_lib.base_config()
    config.stages = ("train_cam", "infer_cam", "eval_cam")
    config.data.name = "voc2012"
    config.data.image_size = 512
    config.model.backbone = args.backbone
    config.train.update(
        strategy=args.strategy,
        split="train_aug",
        batch_size=32,
        epochs=15,
        lr=0.1,
        augment="randaugment",
        label_smoothing=0.1,
    )
    config.infer.update(splits=("train", "val"), max_image_size=500)
    config.eval.split = "train"
    return config
