r"""Segment your own images with a trained segmentation network (stage train_segmentation).

    python -m pnoc_jax.predict --workdir runs/quickstart --images a.jpg b.png photos/ --out masks
    python -m pnoc_jax.predict --checkpoint runs/voc/train_segmentation/weights/best.npz \
        --images photos/*.jpg --out predictions --scales=1.0 --noflip --crf_iterations=0

`--images` takes any number of files and folders, as the shell gives them (every file of a
folder with an image extension PIL knows; a quoted glob is expanded here; a name may hold
commas). `--out` must not hold any of the images: predict never writes over an input.
For each image, `<out>/<name>.png` holds the predicted class of every pixel (a palette PNG: its
values are the class indices 0..C, its colours VOC's) at the image's own size, and
`<out>/<name>_overlay.jpg` the prediction blended onto the image; `<out>/classes.txt` lists the
class of each index. Test-time augmentation as the pipeline's: scales (`--scales`), horizontal
flip (`--flip`), the mean of the logits, softmax and the dense CRF (`--crf_iterations`, 0 = off).
Images whose longer side exceeds `--max_side` are shrunk for the network (and the CRF); their
mask is resized back (nearest) to the original size. EXIF orientation is applied, as a viewer
shows the photo. 16-bit greyscale PNGs are scaled to 8 bits, palette
PNGs read in their colours. An image that cannot be read, or is too large to decode (PIL's
limit against decompression bombs), is reported and skipped, the others still run; the exit
code is then 1. A mistake of the command line is one line and exit code 2.
"""

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np
from absl import app, flags, logging
from PIL import Image, ImageOps, UnidentifiedImageError

from pnoc_jax import visualize
from pnoc_jax.core import artifacts, fileio, progress
from pnoc_jax.core.errors import UserError
from pnoc_jax.inference import dense
from pnoc_jax.segmentation import model as seg_model
from pnoc_jax.segmentation import tasks
from pnoc_jax.segmentation import train as seg_train

_WORKDIR = flags.DEFINE_string(
    "workdir", None, "A run's workdir with a trained segmentation stage."
)
_STAGE = flags.DEFINE_enum(
    "stage",
    "train_segmentation",
    [seg_train.STAGES[labels][0] for labels in seg_train.LABELS],
    "The training stage whose kept network segments (with --workdir).",
)
_CHECKPOINT = flags.DEFINE_string(
    "checkpoint", None, "A segmentation weights file (.npz) with its model.json beside it."
)
_IMAGES = flags.DEFINE_multi_string(
    "images", None, "Image files and/or folders: --images a.jpg b.png photos/ (or repeated)."
)
_OUT = flags.DEFINE_string("out", None, "Output folder (created); must hold none of the images.")
_SCALES = flags.DEFINE_list("scales", ["0.5", "1.0", "1.5", "2.0"], "Test-time scales.")
_FLIP = flags.DEFINE_bool("flip", True, "Add the horizontally flipped image's logits.")
_CRF = flags.DEFINE_integer("crf_iterations", 10, "Dense CRF iterations; 0 = no CRF.")
_MAX_SIDE = flags.DEFINE_integer(
    "max_side", 1024, "Longer side above which an image is shrunk for the network."
)
_BATCH = flags.DEFINE_integer("batch", 4, "Images per forward pass (x2 with --flip).")


def fail(message: str, code: int = 2) -> None:
    print(f"pnoc_jax.predict: error: {message}", file=sys.stderr, flush=True)
    sys.exit(code)


def resolve_weights(workdir: str | None, stage: str, checkpoint: str | None) -> tuple[str, str]:
    """(weights .npz, model.json) of `--checkpoint`, or of the workdir's stage."""
    if checkpoint:
        path = fileio.expand(checkpoint)
        spec = os.path.join(os.path.dirname(path), "model.json")
    elif workdir:
        workdir = fileio.expand(workdir)
        path = artifacts.segmentation_weights_file(workdir, stage)
        spec = artifacts.model_file(workdir, stage)
    else:
        raise UserError("give --workdir (a run with a trained segmentation stage) or --checkpoint")
    for file, what in ((path, "weights"), (spec, "model description")):
        if not fileio.isfile(file):
            hint = f"; run stage {stage} first" if workdir and not checkpoint else ""
            raise UserError(f"{file}: no such {what} file{hint}")
    return path, spec


def image_extensions() -> set[str]:
    """File extensions PIL can open (lower case, with the dot)."""
    Image.init()
    return {ext for ext, fmt in Image.registered_extensions().items() if fmt in Image.OPEN}


def collect(paths: list[str]) -> tuple[list[str], list[str]]:
    """(image files, problems): folders expand to their image files, sorted."""
    files, problems = [], []
    extensions = image_extensions()
    for raw in paths:
        path = fileio.expand(raw)
        if any(c in path for c in "*?[") and not fileio.exists(path):  # a quoted glob
            matches = fileio.glob(path)
            files += [m for m in matches if fileio.isfile(m)]
            if not matches:
                problems.append(f"{path}: no file matches")
            continue
        if fileio.isdir(path):
            found = sorted(
                os.path.join(path, f)
                for f in fileio.listdir(path)
                if os.path.splitext(f)[1].lower() in extensions
                and fileio.isfile(os.path.join(path, f))
            )
            if not found:
                problems.append(f"{path}: no image files in this folder")
            files += found
        elif fileio.isfile(path):
            files.append(path)
        else:
            problems.append(f"{path}: no such file or folder")
    return files, problems


def read_image(path: str) -> np.ndarray:
    """uint8 RGB [H, W, 3] as a viewer shows it (EXIF orientation applied); ValueError naming
    the file and why when it is not an image PIL can read."""
    try:
        with fileio.open_read(path) as f, Image.open(f) as image:
            image = ImageOps.exif_transpose(image)
            if image.mode.startswith("I") or image.mode == "F":  # 16-bit greyscale PNG, TIFF
                grey = np.asarray(image, np.float64) / 257.0
                return np.repeat(np.clip(grey.round(), 0, 255).astype(np.uint8)[..., None], 3, -1)
            return np.asarray(image.convert("RGB"))
    except (UnidentifiedImageError, OSError, SyntaxError, Image.DecompressionBombError) as e:
        raise ValueError(f"{path}: {_unreadable(e)}") from None


def _unreadable(error: Exception) -> str:
    """Why PIL could not open or decode an image, in a few words."""
    if isinstance(error, UnidentifiedImageError):
        return "not an image format PIL can read"
    if isinstance(error, Image.DecompressionBombError):
        return f"too large to decode ({error})"
    return f"unreadable image ({error})"


def output_names(files: list[str]) -> list[str]:
    """One output name per file: its stem; stem_ext where files of several formats share a
    stem; a _2, _3 suffix for what still repeats (the same file given twice)."""
    stems = [os.path.splitext(os.path.basename(f))[0] for f in files]
    exts = [os.path.splitext(f)[1].lstrip(".").lower() for f in files]
    names = []
    for stem, ext in zip(stems, exts, strict=True):
        shared = {e for s, e in zip(stems, exts, strict=True) if s == stem}
        names.append(f"{stem}_{ext}" if len(shared) > 1 and ext else stem)
    seen: dict[str, int] = {}
    unique = []
    for name in names:  # the same file given twice, or stems that still collide
        seen[name] = seen.get(name, 0) + 1
        unique.append(name if seen[name] == 1 else f"{name}_{seen[name]}")
    return unique


def shrink(image: np.ndarray, max_side: int) -> np.ndarray:
    """The image with its longer side at most `max_side` (PIL bicubic)."""
    h, w = image.shape[:2]
    if max(h, w) <= max_side:
        return image
    scale = max_side / max(h, w)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    return np.asarray(Image.fromarray(image).resize(size, Image.Resampling.BICUBIC))


def segment_images(
    files: list[str],
    out_dir: str,
    weights_path: str,
    spec_path: str,
    *,
    scales: list[float],
    flip: bool,
    crf_iterations: int,
    max_side: int,
    batch: int,
) -> tuple[list[str], list[str]]:
    """Segments `files` into `out_dir`. Returns (written label PNGs, problems)."""
    spec = seg_model.ModelSpec.read(spec_path)
    predict, multiple = seg_model.load_predictor(spec, weights_path)
    problems, sizes = [], {}
    for path in files:  # sizes first: one canvas for all images, so each scale compiles once
        try:
            with fileio.open_read(path) as f, Image.open(f) as image:
                sizes[path] = max(image.size)
        except (UnidentifiedImageError, OSError, SyntaxError, Image.DecompressionBombError) as e:
            problems.append(f"{path}: {_unreadable(e)}")
    readable = [f for f in files if f in sizes]
    if not readable:
        return [], problems
    canvas = max(min(size, max_side) for size in sizes.values())
    names = dict(zip(files, output_names(files), strict=True))
    fileio.makedirs(out_dir)
    fileio.write_text(
        os.path.join(out_dir, "classes.txt"),
        "".join(f"{i}\t{name}\n" for i, name in enumerate(spec.class_names)),
    )
    written = []
    for start in range(0, len(readable), batch):
        images, paths = [], []
        for path in readable[start : start + batch]:
            try:
                images.append(read_image(path))
                paths.append(path)
            except ValueError as e:
                problems.append(str(e))
        if not images:
            continue
        small = [shrink(image, max_side) for image in images]
        logits = dense.multiscale_logits(small, predict, scales, canvas, multiple, flip)
        for path, image, work, maps in zip(paths, images, small, logits, strict=True):
            plain, refined = tasks.predict_labels(work, maps, crf_iterations)
            label = plain if refined is None else refined
            if work.shape != image.shape:
                h, w = image.shape[:2]
                label = np.asarray(Image.fromarray(label).resize((w, h), Image.Resampling.NEAREST))
            target = os.path.join(out_dir, f"{names[path]}.png")
            fileio.write_png(target, label)
            overlay = visualize.overlay_labels(image, label)
            with fileio.atomic_path(os.path.join(out_dir, f"{names[path]}_overlay.jpg")) as tmp:
                Image.fromarray(overlay).save(tmp, format="JPEG", quality=90)
            written.append(target)
            logging.info("%s -> %s (%dx%d)", path, target, image.shape[1], image.shape[0])
    return written, problems


def check_out(out_dir: str, files: list[str]) -> None:
    """UserError when `out_dir` is a file or holds one of the input images."""
    if fileio.isfile(out_dir):
        raise UserError(f"--out {out_dir} is a file; give a folder for the masks")
    out = fileio.realpath(out_dir)
    inside = [f for f in files if fileio.realpath(os.path.dirname(f)) == out]
    if inside:
        raise UserError(
            f"--out {out_dir} holds input images ({os.path.basename(inside[0])}"
            f"{f' and {len(inside) - 1} more' if len(inside) > 1 else ''}): predict never writes "
            f"beside its inputs; give another folder"
        )


def main(argv: list[str]) -> None:
    progress.quiet_libraries()
    paths = [*(_IMAGES.value or []), *argv[1:]]  # --images a.jpg b.jpg photos/: the shell's way
    if not paths:
        fail("--images: give image files and/or folders")
    if not _OUT.value:
        fail("--out: give the output folder")
    try:
        scales = [float(s) for s in _SCALES.value]
    except ValueError:
        fail(f"--scales={','.join(_SCALES.value)}: expected positive numbers")
    if not scales or any(s <= 0 for s in scales):
        fail(f"--scales={','.join(_SCALES.value)}: expected positive numbers")
    if _CRF.value < 0 or _MAX_SIDE.value < 16 or _BATCH.value < 1:
        fail("--crf_iterations >= 0, --max_side >= 16 and --batch >= 1 expected")
    files, problems = collect(paths)
    out_dir = fileio.expand(_OUT.value)
    try:
        check_out(out_dir, files)
    except UserError as e:
        fail(str(e))
    try:
        weights_path, spec_path = resolve_weights(_WORKDIR.value, _STAGE.value, _CHECKPOINT.value)
        spec = seg_model.ModelSpec.read(spec_path)
        written, failed = segment_images(
            files,
            out_dir,
            weights_path,
            spec_path,
            scales=scales,
            flip=_FLIP.value,
            crf_iterations=_CRF.value,
            max_side=_MAX_SIDE.value,
            batch=_BATCH.value,
        )
    except (UserError, ValueError, FileNotFoundError) as e:
        fail(str(e), 1)
    problems += failed
    for problem in problems:
        print(f"pnoc_jax.predict: skipped {problem}", file=sys.stderr, flush=True)
    print(
        f"segmented {len(written)} image(s) with {spec.model} ({spec.dataset} classes) into "
        f"{_OUT.value}" + (f"; {len(problems)} skipped" if problems else ""),
        flush=True,
    )
    if problems:
        sys.exit(1)


if __name__ == "__main__":
    app.run(main)
