"""Where every artifact of a run lives: the one module that knows folder and file names.

A run's workdir holds one folder per stage, `<workdir>/<stage>/`, with `config.json` (written
when the stage starts) and `DONE.json` (when it finished). Training stages add `ckpt/` (Orbax),
`weights/<state>.npz` (the final variables, read by later stages), `metrics.jsonl` and
`tensorboard/`; per-image stages add one file per image under a folder per split (score arrays
as `<id>.npz`, read and written by `core.scores`; label maps as palette `<id>.png`); evaluation
stages add `metrics.json`, `sweep.csv` and `sweep.png`.
"""

import json
import os
from collections.abc import Iterable

from pnoc_jax.core import fileio

# How each kind of output starts, and what a whole file holds `offset` bytes before its end
# (truncation loses it): (head, tail, offset).
_SIGNATURES = {
    # a zip: the end-of-directory record is its last 22 bytes (np.savez writes no comment)
    ".npz": (b"PK", b"PK\x05\x06", 22),
    ".npy": (b"\x93NUMPY", b"", 0),
    ".png": (b"\x89PNG\r\n\x1a\n", b"IEND\xaeB`\x82", 8),
    ".jpg": (b"\xff\xd8", b"", 0),
}


def damage(path: str) -> str | None:
    """Why `path` is not a whole output ("missing", "empty", "truncated", ...); None when it
    looks whole. Cheap: the first and last bytes of a file, by its extension; a JSON file is
    parsed. Nothing is read beyond that, so a whole split of outputs checks in seconds."""
    try:
        if fileio.isdir(path):
            return "a folder where a file should be"
        with fileio.open_read(path) as f:
            head = f.read(16)
            if not head:
                return "empty"
            extension = os.path.splitext(path)[1].lower()
            if extension == ".json":
                json.loads(head + f.read())
                return None
            start, tail, offset = _SIGNATURES.get(extension, (b"", b"", 0))
            if not head.startswith(start):
                return f"not a {extension} file"
            size = f.seek(0, os.SEEK_END)
            if size < offset:
                return "truncated"
            f.seek(size - offset)
            return None if f.read(len(tail)) == tail else "truncated"
    except FileNotFoundError:
        return "missing"
    except NotADirectoryError:
        return "a file where a folder should be"
    except ValueError:  # undecodable JSON
        return "not valid JSON"


def missing(paths: Iterable[str], show: int = 3) -> list[str]:
    """The first `show` of `paths` that are missing or damaged (`damage`; a damaged one is
    shown with why), and how many are missing or damaged in all."""
    bad = []
    for path in paths:
        why = damage(path)
        if why is not None:
            bad.append(path if why == "missing" else f"{path} ({why})")
    if len(bad) > show:
        return [*bad[:show], f"... {len(bad)} files missing or damaged in all"]
    return bad


def lock_file(workdir: str) -> str:
    """Held by the run that uses the workdir (`pipeline.workdir_lock`)."""
    return os.path.join(workdir, ".lock")


def summary_files(workdir: str) -> tuple[str, str]:
    """`summary.json` and `summary.md`: every evaluated stage's headline numbers."""
    return os.path.join(workdir, "summary.json"), os.path.join(workdir, "summary.md")


def stage_dir(workdir: str, stage: str) -> str:
    return os.path.join(workdir, stage)


def config_file(workdir: str, stage: str) -> str:
    return os.path.join(workdir, stage, "config.json")


DONE = "DONE.json"  # written last: a stage folder holding it is finished and whole


def done_file(workdir: str, stage: str) -> str:
    return os.path.join(workdir, stage, DONE)


def checkpoint_dir(workdir: str, stage: str) -> str:
    return os.path.join(workdir, stage, "ckpt")


def weights_file(workdir: str, stage: str, state: str = "f") -> str:
    """Final variables of the train state `state` ("f" the trained network, "oc" P-NOC's noc)."""
    return os.path.join(workdir, stage, "weights", f"{state}.npz")


def metrics_file(workdir: str, stage: str) -> str:
    return os.path.join(workdir, stage, "metrics.json")


def report_files(workdir: str, stage: str, crf: bool = False) -> list[str]:
    """What an evaluation stage writes: metrics.json, sweep.csv and sweep.png; with the CRF
    variant of the sweep also sweep_crf.csv."""
    folder = stage_dir(workdir, stage)
    names = ("metrics.json", "sweep.csv", "sweep.png", *(("sweep_crf.csv",) if crf else ()))
    return [os.path.join(folder, name) for name in names]


def score_file(directory: str, image_id: str) -> str:
    """Our per-image score file in `directory`: `<id>.npz` (no pickle; `core.scores`)."""
    return os.path.join(directory, f"{image_id}.npz")


def official_score_file(directory: str, image_id: str) -> str:
    """The reference code's per-image score file, `<id>.npy` (a pickled dict), still read."""
    return os.path.join(directory, f"{image_id}.npy")


def cam_dir(workdir: str, split: str) -> str:
    """CAMs of `split` (stage infer_cam): `<id>.npz` with arrays keys, cam and hr_cam."""
    return os.path.join(workdir, "infer_cam", split)


def cam_file(workdir: str, split: str, image_id: str) -> str:
    return score_file(cam_dir(workdir, split), image_id)


def affinity_label_dir(workdir: str, split: str) -> str:
    """Affinity labels of `split` (stage affinity_labels): `<id>.png`, 0 / 1..C / 255."""
    return os.path.join(workdir, "affinity_labels", split)


def affinity_label_file(workdir: str, split: str, image_id: str) -> str:
    return os.path.join(affinity_label_dir(workdir, split), f"{image_id}.png")


def rw_dir(workdir: str, split: str) -> str:
    """Random-walk scores of `split` (stage random_walk): `<id>.npz` with arrays keys and rw."""
    return os.path.join(workdir, "random_walk", split)


def rw_file(workdir: str, split: str, image_id: str) -> str:
    return score_file(rw_dir(workdir, split), image_id)


def rw_threshold_file(workdir: str) -> str:
    """The background threshold chosen by the sweep of `config.rw.bg_threshold_split`."""
    return os.path.join(workdir, "random_walk", "threshold.json")


def pseudo_label_dir(workdir: str, split: str) -> str:
    """Pseudo-labels of `split` (stage random_walk): `<id>.png`, 0 / 1..C."""
    return os.path.join(workdir, "random_walk", f"{split}_pseudo")


def pseudo_label_file(workdir: str, split: str, image_id: str) -> str:
    return os.path.join(pseudo_label_dir(workdir, split), f"{image_id}.png")


def compare_seed_dir(workdir: str, seed: int) -> str:
    """The workdir of one seed of the strategy comparison (its shared train_oc lives here)."""
    return os.path.join(workdir, "compare", f"seed{seed}")


def compare_run_dir(workdir: str, seed: int, strategy: str) -> str:
    """The workdir of one (seed, strategy) run of the strategy comparison."""
    return os.path.join(compare_seed_dir(workdir, seed), strategy)


# ---------------------------------------------------------------------------- saliency
# train_saliency: `weights/f.npz` (C²AM) and `orientation.json`; infer_saliency: per split the
# maps (`<split>/<id>.npz`, keys [0, 1], cam, hr_cam) and the CRF masks (`<split>_masks/<id>.png`,
# greyscale 0/255); train_detector: `weights/detector.npz`; infer_detector: `<split>/<id>.png`
# (greyscale 255·σ); eval_saliency: `metrics.json`.
SALIENCY_STAGES = ("infer_saliency", "infer_detector")  # the stages that make saliency PNGs


def orientation_file(workdir: str) -> str:
    """The foreground/background orientation decided for the trained C²AM (train_saliency)."""
    return os.path.join(workdir, "train_saliency", "orientation.json")


def saliency_map_dir(workdir: str, split: str) -> str:
    """C²AM(-H) maps of `split` (stage infer_saliency): `<id>.npz` (keys [0, 1], cam, hr_cam)."""
    return os.path.join(workdir, "infer_saliency", split)


def saliency_map_file(workdir: str, split: str, image_id: str) -> str:
    return score_file(saliency_map_dir(workdir, split), image_id)


def saliency_png_dir(workdir: str, stage: str, split: str) -> str:
    """The saliency PNGs (greyscale, saliency = value / 255) a saliency stage made for `split`:
    infer_saliency's CRF masks (0/255) or infer_detector's maps (255·σ)."""
    if stage == "infer_saliency":
        return os.path.join(workdir, stage, f"{split}_masks")
    if stage == "infer_detector":
        return os.path.join(workdir, stage, split)
    raise ValueError(f"stage {stage!r} makes no saliency PNGs; expected one of {SALIENCY_STAGES}")


def saliency_png_file(workdir: str, stage: str, split: str, image_id: str) -> str:
    return os.path.join(saliency_png_dir(workdir, stage, split), f"{image_id}.png")


def compare_saliency_dir(workdir: str, seed: int, variant: str) -> str:
    """The workdir of one (seed, variant) run of the saliency comparison (stage
    compare_saliency); variants share their finished upstream stages through symlinks."""
    return os.path.join(workdir, "compare_saliency", f"seed{seed}", variant)


# ---------------------------------------------------------------------------- segmentation
# Stages train_segmentation / infer_segmentation / eval_segmentation (pseudo-labels) and their
# fully supervised twins *_gt (ground-truth masks) share these names, by stage.


def segmentation_weights_file(workdir: str, stage: str) -> str:
    """The checkpoint a segmentation training stage keeps: the best by validation mIoU."""
    return weights_file(workdir, stage, "best")


def model_file(workdir: str, stage: str) -> str:
    """`weights/model.json`: the architecture of the stage's weights (what `predict` builds)."""
    return os.path.join(workdir, stage, "weights", "model.json")


def validation_file(workdir: str, stage: str) -> str:
    """`validation.jsonl`: one line per validation (step, epoch, mIoU, best so far)."""
    return os.path.join(workdir, stage, "validation.jsonl")


def segmentation_dir(workdir: str, stage: str, split: str, crf: bool = True) -> str:
    """Predicted label maps of `split` (stage infer_segmentation[_gt]): `<id>.png`, 0..C.

    `crf=False`: the same predictions before the dense CRF (`<split>_nocrf/`), written when
    the CRF is on.
    """
    return os.path.join(workdir, stage, split if crf else f"{split}_nocrf")


def segmentation_file(workdir: str, stage: str, split: str, image_id: str, crf: bool = True):
    return os.path.join(segmentation_dir(workdir, stage, split, crf), f"{image_id}.png")


def server_dir(workdir: str, stage: str) -> str:
    """Predictions of images without ground truth (VOC `test`) in the layout the PASCAL VOC
    evaluation server expects: `results/VOC2012/Segmentation/comp6_test_cls/<id>.png`."""
    return os.path.join(workdir, stage, "results", "VOC2012", "Segmentation", "comp6_test_cls")


def server_file(workdir: str, stage: str, image_id: str) -> str:
    return os.path.join(server_dir(workdir, stage), f"{image_id}.png")


def confusion_picture(workdir: str, stage: str) -> str:
    return os.path.join(workdir, stage, "confusion.png")


def prediction_dir(workdir: str, split: str, supervised: bool = False) -> str:
    """Final predictions of `split`: the weak model's (infer_segmentation) or the fully
    supervised bound's (infer_segmentation_gt)."""
    stage = "infer_segmentation_gt" if supervised else "infer_segmentation"
    return segmentation_dir(workdir, stage, split)


# ---------------------------------------------------------------- end segmentation
