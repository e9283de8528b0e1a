"""Pictures for notebooks and reports: CAM overlays and image/GT/CAM grids (NumPy + OpenCV);
a finished run's outputs side by side, per-class IoU through the pipeline and training curves
(matplotlib, imported when used)."""

import json
import os

import cv2
import numpy as np

from pnoc_jax.core import artifacts, fileio, scores
from pnoc_jax.core.masks import IGNORE, PALETTE


def colorize_mask(mask: np.ndarray) -> np.ndarray:
    """Index mask [H, W] -> RGB [H, W, 3] in the VOC palette (255 = ignore is light grey)."""
    rgb = PALETTE[mask]
    rgb[mask == IGNORE] = 224
    return rgb


def overlay_cam(image: np.ndarray, cam: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """Blends a [H, W] map in [0, 1] (jet colours) onto an RGB uint8 image."""
    heat = cv2.applyColorMap((np.clip(cam, 0, 1) * 255).astype(np.uint8), cv2.COLORMAP_JET)
    return (alpha * heat[..., ::-1] + (1 - alpha) * image).astype(np.uint8)


def _max_map(directory: str, image_id: str, key: str, shape: tuple[int, int]) -> np.ndarray:
    """Max over classes of the [K, H, W] scores `key` of an image's score file (`core.scores`,
    either format) in `directory` (zeros when K = 0)."""
    maps = scores.read_image(directory, image_id, (key,))[key]
    return maps.max(axis=0) if len(maps) else np.zeros(shape, np.float32)


def _grid(columns: list[list[np.ndarray]], size: int) -> np.ndarray:
    """Stacks each column's tiles vertically (each resized to size x size), columns side by side."""
    resized = [
        np.concatenate(
            [cv2.resize(t, (size, size), interpolation=cv2.INTER_NEAREST) for t in tiles], axis=0
        )
        for tiles in columns
    ]
    return np.concatenate(resized, axis=1)


def cam_grid(examples: list[dict], cams_dir: str, size: int = 160) -> np.ndarray:
    """Rows image | ground truth | max-over-classes CAM overlay, one column per example.

    `examples` are dataset dicts (id, image, mask); CAMs (hr_cam) come from their score files
    in `cams_dir` (`<id>.npz`, or the reference's `<id>.npy`).
    """
    columns = []
    for ex in examples:
        cam = _max_map(cams_dir, ex["id"], "hr_cam", ex["mask"].shape)
        columns.append([ex["image"], colorize_mask(ex["mask"]), overlay_cam(ex["image"], cam)])
    return _grid(columns, size)


def pseudo_label_grid(
    examples: list[dict], cams_dir: str, rw_dir: str, pseudo_dir: str, size: int = 160
) -> np.ndarray:
    """Rows image | ground truth | CAM | random walk | pseudo-label, one column per example.

    Reads the score files in `cams_dir` (hr_cam) and `rw_dir` (rw) and `<pseudo_dir>/<id>.png`,
    the outputs of stages infer_cam and random_walk.
    """
    columns = []
    for ex in examples:
        shape = ex["mask"].shape
        cam = _max_map(cams_dir, ex["id"], "hr_cam", shape)
        rw = _max_map(rw_dir, ex["id"], "rw", shape)
        pseudo = fileio.read_png(os.path.join(pseudo_dir, f"{ex['id']}.png"))
        columns.append(
            [
                ex["image"],
                colorize_mask(ex["mask"]),
                overlay_cam(ex["image"], cam),
                overlay_cam(ex["image"], rw),
                colorize_mask(pseudo),
            ]
        )
    return _grid(columns, size)


# ---------------------------------------------------------------- a run at a glance
# What the notebook shows of a finished run: its stages' outputs side by side, one image's CAM
# per class, per-class IoU through the pipeline, and the training curves. Everything is read
# from the workdir; nothing is trained.

# (series, evaluation stage, metrics key of its per-class IoU), in pipeline order.
IOU_STAGES = (
    ("priors (CAM)", "eval_cam", "per_class_iou"),
    ("pseudo-labels (RW)", "eval_pseudo_labels", "pseudo_label_per_class_iou"),
    ("segmentation", "eval_segmentation", "per_class_iou"),
    ("fully supervised", "eval_segmentation_gt", "per_class_iou"),
)
TRAINING_STAGES = (
    "train_oc",
    "train_cam",
    "train_saliency",
    "train_detector",
    "train_affinity",
    "train_segmentation",
    "train_segmentation_gt",
)


def overlay_labels(image: np.ndarray, label: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """The image with every pixel of class 1..C blended with its palette colour (uint8 RGB)."""
    colours = colorize_mask(label).astype(np.float32)
    blended = (1 - alpha) * image.astype(np.float32) + alpha * colours
    objects = ((label != 0) & (label != IGNORE))[..., None]
    return np.where(objects, blended, image).astype(np.uint8)


def _read_label(directory: str, image_id: str) -> np.ndarray:
    return fileio.read_png(os.path.join(directory, f"{image_id}.png"))


def run_columns(workdir: str, split: str) -> dict[str, object]:
    """The columns a run has for `split`: title -> function(example) -> RGB tile.

    Always the image and its ground truth; then the CAM (max over the image's classes), the
    pseudo-label, the segmentation and the fully supervised segmentation where those stages
    wrote this split.
    """
    columns: dict[str, object] = {
        "image": lambda ex: ex["image"],
        "ground truth": lambda ex: colorize_mask(ex["mask"]),
    }
    cams = artifacts.cam_dir(workdir, split)
    if fileio.isdir(cams):
        columns["CAM"] = lambda ex: overlay_cam(
            ex["image"], _max_map(cams, ex["id"], "hr_cam", ex["mask"].shape)
        )
    found = (
        ("pseudo-label", artifacts.pseudo_label_dir(workdir, split)),
        ("segmentation", artifacts.prediction_dir(workdir, split)),
        ("fully supervised", artifacts.prediction_dir(workdir, split, supervised=True)),
    )
    for title, folder in found:
        if fileio.isdir(folder):
            columns[title] = lambda ex, d=folder: colorize_mask(_read_label(d, ex["id"]))
    return columns


def side_by_side(examples: list[dict], columns: dict[str, object], tile: float = 1.8):
    """A matplotlib figure: one row per example (labelled with its id), one labelled column per
    entry of `columns` (e.g. `run_columns`)."""
    import matplotlib.pyplot as plt

    rows, cols = len(examples), len(columns)
    fig, axes = plt.subplots(rows, cols, figsize=(tile * cols, tile * rows), squeeze=False)
    for r, example in enumerate(examples):
        for c, (title, render) in enumerate(columns.items()):
            ax = axes[r, c]
            ax.imshow(render(example), interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(title)
            if c == 0:
                ax.set_ylabel(example["id"], rotation=0, ha="right", va="center")
    fig.tight_layout()
    return fig


def class_cams(example: dict, cams_dir: str, class_names: list[str]) -> dict[str, np.ndarray]:
    """{class name: CAM overlay} for each class of the image's CAM file (`hr_cam` planes)."""
    record = scores.read_image(cams_dir, example["id"], ("hr_cam",))
    return {
        class_names[int(key) - 1]: overlay_cam(example["image"], cam)
        for key, cam in zip(record["keys"][1:], record["hr_cam"], strict=True)
    }


def iou_through_pipeline(workdir: str) -> dict[str, dict]:
    """{series: {"split": ..., "iou": {class: IoU}}} of every evaluation stage the run has,
    in pipeline order (priors, pseudo-labels, segmentation, fully supervised)."""
    series = {}
    for name, stage, key in IOU_STAGES:
        path = artifacts.metrics_file(workdir, stage)
        if fileio.exists(path):
            metrics = fileio.read_json(path)
            if key in metrics:
                series[name] = {"split": metrics.get("split", "?"), "iou": metrics[key]}
    return series


def iou_chart(series: dict[str, dict], names: list[str] | None = None):
    """Grouped bars: per class (in the order of `names`, e.g. background first; default: the
    first series'), and the mIoU, one bar per series of `iou_through_pipeline`."""
    import matplotlib.pyplot as plt

    if not series:
        raise ValueError("no evaluation stage has metrics in this run")
    names = list(names or next(iter(series.values()))["iou"])
    labels = [*names, "mIoU"]
    fig, ax = plt.subplots(figsize=(max(6.0, 0.7 * len(labels) * max(len(series), 2) / 2), 3.6))
    width = 0.8 / len(series)
    for i, (name, entry) in enumerate(series.items()):
        values = [100 * entry["iou"].get(n, float("nan")) for n in names]
        values.append(float(np.nanmean(values)))
        x = np.arange(len(labels)) + (i - (len(series) - 1) / 2) * width
        ax.bar(x, values, width, label=f"{name} ({entry['split']})")
    ax.set_xticks(np.arange(len(labels)), labels, rotation=45, ha="right")
    ax.set_ylabel("IoU (%)")
    ax.set_ylim(0, 100)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8, ncol=2)
    fig.tight_layout()
    return fig


def _curve_panels(rows: list[dict]) -> dict[str, list[str]]:
    """Panel title -> the metrics.jsonl keys it plots (losses, λs, learning rate, grad norm)."""
    keys = sorted({k for row in rows for k in row if k.startswith("train/")})
    groups = {
        "losses": [k for k in keys if "loss" in k],
        "loss weights (λ)": [k for k in keys if "lambda" in k],
        "learning rate": [k for k in keys if k.endswith("lr")],
        "gradient norm": [k for k in keys if k.endswith("grad_norm")],
    }
    return {title: ks for title, ks in groups.items() if ks}


def training_curves(workdir: str, stages: tuple[str, ...] = TRAINING_STAGES):
    """One row per training stage of the run, one panel per kind of curve (losses, λs, lr,
    gradient norm, and the validation mIoU of the segmentation stages)."""
    import matplotlib.pyplot as plt

    from pnoc_jax.core import writers

    found = []
    for stage in stages:
        folder = artifacts.stage_dir(workdir, stage)
        if fileio.exists(os.path.join(folder, writers.METRICS_FILE)):
            rows = writers.read_metrics(folder)
            validation = artifacts.validation_file(workdir, stage)
            found.append((stage, rows, validation if fileio.exists(validation) else ""))
    if not found:
        raise ValueError(f"no training stage of {workdir} has metrics")
    width = max(len(_curve_panels(rows)) + bool(val) for _, rows, val in found)
    fig, axes = plt.subplots(
        len(found), width, figsize=(3.4 * width, 2.4 * len(found)), squeeze=False
    )
    for r, (stage, rows, validation) in enumerate(found):
        panels = _curve_panels(rows)
        for c, (title, keys) in enumerate(panels.items()):
            ax = axes[r, c]
            for key in keys:
                points = [(row["step"], row[key]) for row in rows if key in row]
                ax.plot(*zip(*points, strict=True), label=key.removeprefix("train/"))
            ax.set_title(title, fontsize=9)
            if len(keys) > 1:
                ax.legend(fontsize=6)
        if validation:
            ax = axes[r, len(panels)]
            lines = fileio.read_text(validation).splitlines()
            scored = [json.loads(line) for line in lines if line.strip()]
            ax.plot([s["step"] for s in scored], [100 * s["miou"] for s in scored], "o-")
            ax.set_title("validation mIoU (%)", fontsize=9)
        for c in range(len(panels) + bool(validation), width):
            axes[r, c].axis("off")
        axes[r, 0].set_ylabel(stage, fontsize=10)
        axes[r, 0].set_xlabel("step", fontsize=8)
    fig.tight_layout()
    return fig


def run_config(workdir: str, stages: tuple[str, ...] = ("eval_segmentation", "eval_cam")):
    """The config a run's stages recorded (`<stage>/config.json`), from the first of `stages`
    that has one, else from any stage of the workdir."""
    from ml_collections import ConfigDict

    folders = [*stages, *fileio.listdir(workdir)]
    for stage in folders:
        path = artifacts.config_file(workdir, stage)
        if fileio.exists(path):
            return ConfigDict(fileio.read_json(path)["config"])
    raise FileNotFoundError(f"{workdir}: no stage has run here (no <stage>/config.json)")


def show_class_cams(
    example: dict, cams_dir: str, class_names: list[str], class_name: str | None = None
):
    """The image and its CAM of each of its classes (or of `class_name` only), labelled."""
    import matplotlib.pyplot as plt

    cams = class_cams(example, cams_dir, class_names)
    if class_name is not None:
        if class_name not in cams:
            raise ValueError(
                f"image {example['id']} has no CAM of class {class_name!r}; its classes: "
                f"{sorted(cams)}"
            )
        cams = {class_name: cams[class_name]}
    panels = {"image": example["image"], **{f"CAM: {n}": cam for n, cam in cams.items()}}
    fig, axes = plt.subplots(1, len(panels), figsize=(2.6 * len(panels), 2.8), squeeze=False)
    for ax, (title, picture) in zip(axes[0], panels.items(), strict=True):
        ax.imshow(picture)
        ax.set_title(title)
        ax.axis("off")
    fig.suptitle(example["id"])
    fig.tight_layout()
    return fig
