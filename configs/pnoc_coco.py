r"""P-NOC on MS COCO 2014 (method.md §1, §11, §14): priors, RW pseudo-labels, then DeepLab.

    python -m pnoc_jax.main --config configs/pnoc_coco.py --workdir runs/coco \
        --config.data.manual_dir=/data/coco2014 --config.model.pretrained=resnest269.npz

`manual_dir` holds train2014/, val2014/ and annotations/instances_{train,val}2014.json (the
official download; `pnoc_jax/data/builders/coco2014.py`). `resnest269.npz` is the ResNeSt
authors' ImageNet checkpoint converted once (docs/recipes.md); without
config.model.pretrained the run stops in validation unless
--config.model.allow_random_init=True.

Arguments (`configs/pnoc_coco.py:strategy=poc,backbone=resnet101,ls=0.1`):
  strategy  cam | puzzle | occse | poc | pnoc (default pnoc; cam skips the OC stage)
  backbone  resnest269 (default, the paper's) | any name of the backbone registry
  ls        label smoothing of the strategy (default 0.0: the published COCO P-NOC,
            docs/recipes.md "P-NOC (OC+ra)", was trained without it)
  saliency  detector | masks | none, as configs/pnoc_voc.py (default detector)
  dtype     float32 (default) | bfloat16, as configs/pnoc_voc.py

Recipe (HEAD runner for COCO where it states a value, method.md §11/§14; the rest as VOC):
  data      train = train2014 (82,783 images), priors and pseudo-labels evaluated on
            val = val2014 (40,504), 80 classes (+ background: 81-class heads where a network
            predicts background); random resize of the longer side to 400..800, crop 640.
  OC        vanilla CAM, RandAugment + cutout, LS 0.1, B32, SGD m0 lr 0.05, 15 epochs.
  P-NOC     B16 x accumulate 2 (summed, as the reference), lr 0.05, colorjitter, 15 epochs,
            noc from the OC (frozen BN), λ_noc 0->1, δ_noc 0.2, k_noc 1, CSE gradient into noc.
  C²AM-H    as VOC (common.add_paper_saliency) with the COCO values lr 0.0005, δ_fg 0.3;
            PoolNet on its masks; saliency-guided affinity labels. Table 6 on val2014.
  RW        affinity labels from the train CAMs and saliency, IRN boundary net on the frozen
            ImageNet backbone, β 10, 2^8 steps, bg 0.3, CRF t1 gt .9.
  DeepLab   DeepLabV3+ as VOC (configs/pnoc_voc.py) with lr 0.004, on the train
            pseudo-labels, kept by the val pseudo-labels' mIoU; and its fully supervised bound.
Evaluation: the plain sweep, and the RW sweep with the pseudo-labels' CRF. The priors' CRF
sweep is off (`eval.crf_iterations=0`): 16 CRF-refined maps of each of val2014's 40,504 images
take ~6.4 CPU-s per image, ~72 CPU-hours (docs/performance.md); set
--config.eval.crf_iterations=10 to add it.
"""

from pnoc_jax import config_lib

common = config_lib.import_beside(__file__, "common")


def get_config(arg: str | None = None):
    args = config_lib.parse_arg(
        arg, strategy="pnoc", backbone="resnest269", ls=0.0, saliency="detector", dtype="float32"
    )
    config = config_lib.base_config()
    config.data.name = "coco2014"
    config.data.image_size = 640
    config.model.backbone = args.backbone
    config.model.output_stride = 16
    coco = {"split": "train", "epochs": 15, "min_size": 400, "max_size": 800}
    config.oc.update(
        coco, strategy="cam", batch_size=32, lr=0.05, augment="randaugment", label_smoothing=0.1
    )
    accumulate = 2 if args.strategy != "cam" else 1
    config.train.update(
        coco,
        strategy=args.strategy,
        batch_size=16 if accumulate > 1 else 32,
        accumulate_steps=accumulate,
        lr=0.05,
        augment="colorjitter" if args.strategy != "cam" else "randaugment",
        label_smoothing=args.ls,
    )
    config.train.strategy_args.update(noc_threshold=0.2, noc_every=1, noc_cse_gradient=True)
    # COCO images are at most 640 px on a side.
    config.infer.update(splits=("train", "val"), max_image_size=640)
    config.eval.update(split="val", crf_iterations=0)
    config.affinity_labels.split = "train"
    config.rw.update(splits=("train", "val"), max_image_size=640)
    config.stages = common.prior_stages(config.train)
    common.add_paper_saliency(
        config, args.saliency, "configs/pnoc_coco.py", split="train", lr=0.0005,
        hint_threshold=0.3, max_image_size=640,
    )  # fmt: skip
    config.stages += common.LABEL_STAGES
    # DeepLabV3+ as on VOC (method.md §10) with lr 0.004, on the train pseudo-labels, the checkpoint
    # kept by the val pseudo-labels' mIoU, evaluated on val; and its fully supervised bound.
    config.segmentation.update(split="train", val_split="val", lr=0.004)
    config.segmentation_infer.update(splits=("val",), max_image_size=640)
    config.stages += (*common.SEGMENTATION_STAGES, "analyze")
    common.set_dtype(config, args.dtype, "configs/pnoc_coco.py")
    return config
