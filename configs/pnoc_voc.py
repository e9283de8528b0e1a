r"""P-NOC on Pascal VOC 2012 (method.md §1 runners 1-4): priors, saliency, RW pseudo-labels, then
the segmentation model trained on them (and its fully supervised bound).

    python -m pnoc_jax.main --config configs/pnoc_voc.py --workdir runs/voc \
        --config.data.manual_dir=/data/VOCdevkit --config.model.pretrained=resnest269.npz

`resnest269.npz` is the ResNeSt authors' ImageNet checkpoint converted once (docs/recipes.md):
    python -m pnoc_jax.models.convert --torch_checkpoint resnest269-0cc87c48.pth \
        --arch resnest269 --out resnest269.npz
Without config.model.pretrained the run stops in validation (saying where the weights come
from), unless --config.model.allow_random_init=True.

Arguments (`configs/pnoc_voc.py:strategy=poc,backbone=resnet101,ls=0.0`):
  strategy     cam | puzzle | occse | poc | pnoc (default pnoc; cam skips the OC stage)
  backbone     resnest269 (default, the paper's) | resnest50/101/200 | resnet50/101 (...)
  ls           label smoothing of the strategy (default 0.1: "P-NOC+LS", the paper's best)
  train_split  train_aug | train (default train_aug, VOC + SBD's 10582 images, as the paper);
               `train` (VOC's 1464) runs on a plain VOC2012 download without SBD: it is the
               split of both training stages, of the affinity labels, and the first inferred
               and random-walked split.
  saliency     detector | masks | none (default detector, the paper's recipe: C²AM-H with the
               P-NOC hints -> PoolNet trained on its masks -> saliency-guided affinity labels
               from PoolNet's maps; masks: the labels use the C²AM-H CRF masks, no detector;
               none: the conventional affinity labels, no saliency stages). The detector's
               ImageNet ResNet-50: --config.detector.pretrained=resnet50.npz.
  dtype        float32 (default) | bfloat16: the compute dtype of every trained network
               (parameters stay float32), as the reference's mixed precision (AMP) on GPUs;
               a 16 GiB TPU chip needs it (README, "plan").

Recipe (method.md §14, paper-era runner where HEAD differs):
  OC        vanilla CAM, RandAugment (n2, m10) + cutout, LS 0.1, B32, SGD m0 lr 0.1, 15 epochs.
  P-NOC     B16 x accumulate 2, lr 0.1, colorjitter (paper; HEAD used none), 15 epochs;
            noc initialised from the OC, frozen BN, its own SGD (classifier head 10x),
            λ_noc 0->1, δ_noc 0.2, k_noc 1, and the CSE gradient into noc (official code).
The 2 accumulated gradients are summed, as the reference code does, so lr and weight decay are
the reference's. Priors and RW scores are evaluated plain and with the CRF (t 10 gt .7; RW t 1
gt .9). Deviations that remain: docs/deviations.md.
  C²AM-H    (method.md §7, HEAD runner) the CAM backbone from ImageNet, OS16, B64 x accumulate 2,
            lr 0.001, 10 epochs, 448 crops of 515 squares, α 0.25, hint weight 1,
            δ_fg 0.4, LS 0.1; masks: TTA maps > 0.2 + CRF (t 10, gt 0.7).
  Detector  PoolNet, ResNet-50 (torchvision structure, ImageNet), Adam 5e-5, wd 5e-4, 9 epochs,
            8 images per step padded onto a 512 canvas (the reference: batch 1 x iter_size 10;
            8 divides 1, 2, 4 or 8 devices; Adam makes the step size independent of the count).
  Labels    saliency > 0.1 (CRF) as the salient region, CAM fg threshold 0.4 (HEAD; PE 0.3).

Segmentation (argument `segmentation=deeplabv3plus|deeplabv2`, method.md §10):
  DeepLabV3+  (HEAD runner) the CAM network's backbone from ImageNet, OS16, ASPP 6/12/18 GN,
              trained on the train_aug RW pseudo-labels: SGD m.9 Nesterov lr .007 wd 4e-5,
              poly .9, head 10x/20x, B32, 15 epochs, LS .1, colorjitter, resize 320-640, crop
              512; checkpoint kept: best mIoU on the val pseudo-labels. Test: scales
              .5/1/1.5/2 x flip, dense CRF (DeepLab's, t 10); eval on val ground truth.
  DeepLabV2   (the paper's V2 rows, deeplab-pytorch) ResNet-101 MSC at OS8, ASPP-V2 6/12/18/24,
              frozen BN, SGD m.9 lr 2.5e-4 wd 5e-4, poly .9, head 10x/20x, B10, 10k steps,
              crop 321, random scale .5-1.5 (longer side 250-750), no LS, no colour jitter;
              its ImageNet ResNet-101: --config.segmentation.pretrained=resnet101.npz.
  *_gt        the same recipe on the ground-truth masks: the fully supervised upper bound.
"""

from pnoc_jax import config_lib

common = config_lib.import_beside(__file__, "common")


def get_config(arg: str | None = None):
    args = config_lib.parse_arg(
        arg,
        strategy="pnoc",
        backbone="resnest269",
        ls=0.1,
        train_split="train_aug",
        saliency="detector",
        segmentation="deeplabv3plus",
        dtype="float32",
    )
    if args.train_split not in ("train_aug", "train"):
        raise ValueError(
            f"configs/pnoc_voc.py:train_split={args.train_split!r}: expected train_aug (needs "
            "SBD's SegmentationClassAug) or train (a plain VOC2012 download)"
        )
    train_split = args.train_split
    inferred = tuple(dict.fromkeys((train_split, "train", "val")))  # train_aug, train, val
    config = config_lib.base_config()
    config.data.name = "voc2012"
    config.data.image_size = 512
    config.model.backbone = args.backbone
    config.model.output_stride = 16
    voc = {"split": train_split, "epochs": 15, "min_size": 320, "max_size": 640}
    config.oc.update(
        voc, strategy="cam", batch_size=32, lr=0.1, augment="randaugment", label_smoothing=0.1
    )
    accumulate = 2 if args.strategy != "cam" else 1
    config.train.update(
        voc,
        strategy=args.strategy,
        batch_size=16 if accumulate > 1 else 32,
        accumulate_steps=accumulate,
        lr=0.1,
        augment="colorjitter" if args.strategy != "cam" else "randaugment",
        label_smoothing=args.ls,
    )
    config.train.strategy_args.update(noc_threshold=0.2, noc_every=1, noc_cse_gradient=True)
    config.infer.update(splits=inferred, max_image_size=500)
    config.eval.split = "train"
    # Pseudo-labels (§8-§9): affinity labels from the P-NOC CAMs, saliency-guided by default
    # (argument `saliency`), IRN boundary net on the frozen ImageNet backbone, random walk β 10,
    # 2^8 steps, bg 0.3, CRF t1 gt .9.
    config.affinity_labels.split = train_split
    config.rw.update(splits=inferred)
    config.stages = common.prior_stages(config.train)
    common.add_paper_saliency(
        config, args.saliency, "configs/pnoc_voc.py", split=train_split, lr=0.001,
        hint_threshold=0.4, max_image_size=500,
    )  # fmt: skip
    config.stages += common.LABEL_STAGES
    if args.segmentation not in ("deeplabv3plus", "deeplabv2"):
        raise ValueError(
            f"configs/pnoc_voc.py:segmentation={args.segmentation!r}: expected deeplabv3plus "
            "(the paper's main rows) or deeplabv2 (its V2 rows)"
        )
    config.segmentation.update(split=train_split, val_split="val", backbone_weights="pretrained")
    if args.segmentation == "deeplabv2":
        config.segmentation.update(
            model="deeplabv2", backbone="resnet101", output_stride=8, atrous_rates=(),
            frozen_bn=True, batch_size=10, epochs=0, steps=10000, lr=2.5e-4, momentum=0.9,
            nesterov=False, weight_decay=5e-4, poly_power=0.9, lr_mult=(1.0, 2.0, 10.0, 20.0),
            label_smoothing=0.0, augment="", crop_size=321, min_size=250, max_size=750,
        )  # fmt: skip
    config.segmentation_infer.update(splits=("val",), max_image_size=500, crf_iterations=10)
    config.stages += (*common.SEGMENTATION_STAGES, "analyze")
    common.set_dtype(config, args.dtype, "configs/pnoc_voc.py")
    return config
