"""Helpers shared by the recipes in this folder: the prior stages a strategy needs, the paper's
saliency recipe, and the synthetic dataset's whole recipe (quickstart, comparisons).

Config files import this module with `config_lib.import_beside(__file__, "common")`, so they
work from any working directory; they import nothing of the pipeline's stage code.
"""

import ml_collections

from pnoc_jax import config_lib

# The strategies that train against an ordinary classifier (OC-CSE's erasing; `cam.strategies`
# is the authority, and tests/test_recipes.py checks that the two agree).
OC_STRATEGIES = ("occse", "poc", "pnoc")
LABEL_STAGES = ("affinity_labels", "train_affinity", "random_walk", "eval_pseudo_labels")
SEGMENTATION_STAGES = (
    "train_segmentation", "infer_segmentation", "eval_segmentation",
    "train_segmentation_gt", "infer_segmentation_gt", "eval_segmentation_gt",
)  # fmt: skip


# The sections whose networks train, each with its compute dtype (parameters stay float32).
TRAINED_SECTIONS = ("oc", "train", "saliency", "detector", "segmentation")
DTYPES = ("float32", "bfloat16")


def set_dtype(config: ml_collections.ConfigDict, dtype: str, recipe: str) -> None:
    """The compute dtype of every trained network of a recipe (its `dtype` argument)."""
    if dtype not in DTYPES:
        raise ValueError(f"{recipe}:dtype={dtype!r}: expected one of {', '.join(DTYPES)}")
    for section in TRAINED_SECTIONS:
        config[section].dtype = dtype


def prior_stages(train: ml_collections.ConfigDict) -> tuple[str, ...]:
    """The stages that make the priors of the training section `train`: the ordinary
    classifier first when the strategy trains against it or starts from its backbone."""
    reads_oc = train.strategy in OC_STRATEGIES or train.init_backbone_from == "train_oc"
    return (*(("train_oc",) if reads_oc else ()), "train_cam", "infer_cam", "eval_cam")


def add_paper_saliency(
    config: ml_collections.ConfigDict,
    mode: str,
    config_name: str,
    *,
    split: str,
    lr: float,
    hint_threshold: float,
    max_image_size: int,
) -> None:
    """The paper's saliency recipe (method.md §7, §8, HEAD runner) on `config`, whose stages end
    with the priors: C²AM-H (P-NOC hints, ImageNet backbone, OS16, B64 x 2 summed, 10 epochs,
    448 crops of 515 squares, α 0.25, LS 0.1; masks: TTA maps > 0.2 + CRF), PoolNet on its
    masks (ResNet-50, Adam 5e-5, wd 5e-4, 9 epochs) and saliency-guided affinity labels
    (saliency > 0.1, CAM fg 0.4). `mode`: "detector" (the paper's), "masks" (labels from the
    C²AM-H masks) or "none" (conventional labels, no saliency stage); `config_name` is named in
    the error for another mode."""
    if mode not in ("detector", "masks", "none"):
        raise ValueError(
            f"{config_name}:saliency={mode!r}: expected detector (the paper's recipe), masks "
            "(labels from the C²AM-H masks) or none (conventional labels)"
        )
    salient = tuple(dict.fromkeys((split, config.eval.split)))  # labels + detector; Table 6
    config.saliency.update(
        method="ccamh",
        split=split,
        output_stride=16,
        backbone_weights="pretrained",
        batch_size=64,
        accumulate_steps=2,
        lr=lr,
        epochs=10,
        resize_size=515,
        crop_size=448,
        hint_threshold=hint_threshold,
        label_smoothing=0.1,
    )
    config.saliency_infer.update(splits=salient, max_image_size=max_image_size)
    config.detector.update(
        split=split, backbone="resnet50", batch_size=8, epochs=9, lr=5e-5, weight_decay=5e-4,
        max_image_size=max_image_size,
    )  # fmt: skip
    config.detector_infer.splits = salient
    if mode == "none":
        return
    config.stages += ("train_saliency", "infer_saliency")
    config.saliency_eval.sources = ("infer_saliency",)
    if mode == "detector":
        config.stages += ("train_detector", "infer_detector")
        config.saliency_eval.sources += ("infer_detector",)
    config.stages += ("eval_saliency",)
    source = "infer_detector" if mode == "detector" else "infer_saliency"
    config.affinity_labels.update(saliency=source, fg_threshold=0.40, saliency_threshold=0.10)


def synthetic_config(strategy: str = "pnoc", epochs: int = 5) -> ml_collections.ConfigDict:
    """The recipe for the embedded synthetic dataset: tiny ResNet, OS 8, ~100 px images.

    Deviations from the VOC recipe, because nothing here is pretrained and CPU time is short:
    SGD with momentum 0.9 (the reference uses none), lr 0.05 with no 2x/10x/20x multipliers,
    batch 8, and no RandAugment for the OC (its colour operations erase the colour-coded parts
    that identify the synthetic classes). Priors are evaluated on `val` (200 images).
    The pseudo-label deviations are noted below.
    """
    config = config_lib.base_config()
    config.data.name = "synthetic"
    config.data.image_size = 96
    config.model.backbone = "tiny"
    config.model.output_stride = 8
    small = {
        "batch_size": 8,
        "epochs": epochs,
        "lr": 0.05,
        "momentum": 0.9,
        "lr_mult": (1.0, 1.0, 1.0, 1.0),
        "label_smoothing": 0.1,
        "augment": "",
        "min_size": 80,
        "max_size": 128,
    }
    config.oc.update(small)
    config.train.update(small, strategy=strategy, init_backbone_from="train_oc")
    # CAMs of `train` feed the affinity labels, CAMs of `val` the evaluation.
    config.infer.update(splits=("train", "val"), max_image_size=112)
    config.eval.split = "val"
    # AffinityNet on the 1000 train images, pseudo-labels evaluated on val. Its frozen backbone
    # is the CAM network's (nothing ImageNet-like exists here) and its SGD uses momentum 0.9
    # (spec: 0; with momentum 0 the edge layers are still far from fitted after 3 epochs).
    # 2^4 random-walk steps, not 2^8: the stride-4 grids of ~100 px images are ~25 x 25, and
    # 256 steps spread the CAMs over the whole image.
    config.affinity_labels.split = "train"
    config.affinity.update(
        batch_size=8,
        epochs=3,
        momentum=0.9,
        crop_size=96,
        min_size=80,
        max_size=128,
        radius=5,
        backbone_weights="train_cam",
    )
    config.rw.update(splits=("val",), max_image_size=112, exp_times=4)
    # C²AM-H with hints from the P-NOC CAMs of `train`, its masks, a narrow PoolNet on them
    # (head widths / 8) and saliency-guided affinity labels from the detector's maps. Both
    # networks start from the OC's backbone (the ImageNet stand-in); SGD momentum 0.9 and Adam
    # lr 1e-3 (spec: 0 and 5e-5, for ImageNet-initialised networks trained 10 and 9 epochs).
    config.saliency.update(
        method="ccamh",
        output_stride=8,
        backbone_weights="train_oc",
        batch_size=32,
        epochs=3,
        lr=0.01,
        momentum=0.9,
        resize_size=110,
        crop_size=96,
    )
    config.saliency_infer.update(
        splits=("train", "val"), scales=(0.5, 1.0, 1.5), max_image_size=112
    )
    config.detector.update(
        backbone="tiny",
        backbone_weights="train_oc",
        head_divisor=8,
        batch_size=8,
        epochs=2,
        lr=1e-3,
        max_image_size=112,
    )
    config.detector_infer.splits = ("train", "val")
    config.affinity_labels.saliency = "infer_detector"
    config.compare.update(strategies=("cam", "puzzle", "poc", "pnoc"), seeds=(0, 1, 2))
    # DeepLabV3+ on the train pseudo-labels, the best checkpoint
    # by mIoU on the val pseudo-labels, evaluated on the val ground truth; and the same recipe
    # on the ground-truth masks (the fully supervised bound). Tiny-recipe deviations: the head
    # is 64 wide (decoder reduction 16) with rates 2/4/6 on the 12 x 12 layer4 of 96 px crops,
    # the backbone starts from the trained OC (no ImageNet weights exist here), lr 0.01 and
    # no colour jitter (it shifts the colours that identify the synthetic classes).
    config.rw.splits = ("train", "val")
    config.segmentation.update(
        output_stride=8,
        atrous_rates=(2, 4, 6),
        head_channels=64,
        low_level_channels=16,
        backbone_weights="train_oc",
        batch_size=8,
        epochs=3,  # val pseudo-label mIoU still rises: 65.4 after 2 epochs, 69.4 after 3
        lr=0.01,  # 0.02 diverges (23.97 after 3 epochs, measured)
        augment="",
        crop_size=96,
        min_size=80,
        max_size=128,
    )
    # Test time at scale 1 (+ flip, CRF), not 0.5/1/1.5/2: at 0.5 a ~100 px image is ~50 px and
    # the tiny network trained on 80-128 px falls to 30.8 mIoU (val, measured), at 2 to 37.9;
    # the four scales together give 48.1, scale 1 + flip 61.4 (docs/deviations.md).
    config.segmentation_infer.update(splits=("val",), scales=(1.0,), max_image_size=112)
    config.runtime.update(log_every=20, ckpt_every=200, predict_batch_size=8)
    config.stages = (
        "train_oc", "train_cam", "infer_cam", "eval_cam",
        "train_saliency", "infer_saliency", "train_detector", "infer_detector", "eval_saliency",
        *LABEL_STAGES, *SEGMENTATION_STAGES, "analyze",
    )  # fmt: skip
    return config
