r"""Quickstart on the embedded synthetic dataset: train a CAM classifier, infer CAMs, evaluate.

    python -m pnoc_jax.main --config configs/quickstart.py --workdir runs/quickstart

Tiny ResNet at output stride 8 on ~100 px images; a few minutes on 2 CPU cores. The priors
are evaluated on the synthetic `val` split (200 images) to keep it quick; the VOC configs
evaluate on `train` as the paper does. Argument: `:strategy=cam,epochs=8`.
"""

from pnoc_jax import config_lib


def get_config(arg: str | None = None):
    args = config_lib.parse_arg(arg, strategy="cam", epochs=8)
    config = config_lib.base_config()
    config.stages = ("train_cam", "infer_cam", "eval_cam")
    config.data.name = "synthetic"
    config.data.image_size = 96
    config.model.backbone = "tiny"
    config.model.output_stride = 8
    config.train.update(
        strategy=args.strategy,
        batch_size=16,
        epochs=args.epochs,
        lr=0.1,
        min_size=80,
        max_size=128,
        log_every=20,
        ckpt_every=200,
    )
    config.infer.update(splits=("val",), batch_size=8, max_image_size=112)
    config.eval.split = "val"
    return config
