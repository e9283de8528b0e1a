"""CPU benchmark of the dense CRF (vs pydensecrf2 when installed) on synthetic images and on
real photographs in every setting of the pipeline, of the CRF variant of a threshold sweep, of
the random walk, and of the host input pipeline per core.

Run ``python -m pnoc_jax.cpu_benchmark``; prints one JSON object. Single-threaded: run as
a script, the BLAS/OpenMP thread variables are pinned to 1 before NumPy is imported. Also provides
the synthetic photograph-like images and CAM-like probability maps used by the tests.

How it measures: ours and pydensecrf2 get the same inputs and are called in turn (interleaved,
so machine load affects both alike), keeping the best wall and process-CPU time of ``--repeats``
calls; the argmax agreement (and, on synthetic images, the marginals' difference) is reported
beside the times. On synthetic images ours is timed with the position lattice cached per image
size, as in a worker, and cold; peak memory is the RSS increase of one call in a fresh child
process, so C++ allocations count too. ``--photos`` (default: scikit-image's colour photographs,
read as files) resizes each photograph to VOC's 500 px and runs every setting of
`pipeline_crf_settings` on CAM-like label maps (k-means regions of colour and position) or, for
DeepLab's setting, a softmax around them; ``--photos-only`` runs nothing else, ``--sweep-only``
only the 16-threshold CRF sweep at VOC and COCO sizes. The measured figures are in
docs/performance.md.
"""

from __future__ import annotations

import os

if __name__ == "__main__":  # before NumPy is imported
    for _var in (
        "OMP_NUM_THREADS",
        "MKL_NUM_THREADS",
        "OPENBLAS_NUM_THREADS",
        "NUMEXPR_NUM_THREADS",
    ):
        os.environ[_var] = "1"

import argparse
import json
import platform
import resource
import subprocess
import sys
import time
import tracemalloc
from collections.abc import Callable
from typing import Any

import cv2
import numpy as np

__all__ = ["synthetic_cams", "synthetic_photo", "synthetic_probs"]


def synthetic_photo(h: int, w: int, seed: int = 0) -> np.ndarray:
    """Photograph-like uint8 (h, w, 3) RGB: smooth gradients, a few filled shapes, mild noise."""
    rng = np.random.default_rng(seed)
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    img = np.zeros((h, w, 3), np.float32)
    for c in range(3):
        a, b, c0 = rng.uniform(-0.3, 0.3, 2), rng.uniform(0.3, 0.7), c
        img[..., c0] = 255 * (b + a[0] * ys / h + a[1] * xs / w)
    for _ in range(6):
        color = tuple(float(v) for v in rng.uniform(0, 255, 3))
        cy, cx = int(rng.uniform(0, h)), int(rng.uniform(0, w))
        if rng.random() < 0.5:
            axes = (int(rng.uniform(0.08, 0.3) * w), int(rng.uniform(0.08, 0.3) * h))
            cv2.ellipse(img, (cx, cy), axes, float(rng.uniform(0, 180)), 0, 360, color, -1)
        else:
            dy, dx = int(rng.uniform(0.1, 0.3) * h), int(rng.uniform(0.1, 0.3) * w)
            cv2.rectangle(img, (cx - dx, cy - dy), (cx + dx, cy + dy), color, -1)
    img = cv2.GaussianBlur(img, (0, 0), 1.0)
    img += rng.normal(0, 4.0, img.shape).astype(np.float32)
    return np.clip(img, 0, 255).astype(np.uint8)


def synthetic_cams(h: int, w: int, k: int, seed: int = 0) -> np.ndarray:
    """CAM-like float32 (k, h, w) in [0, 1]: a few smooth blobs per class, max-normalised."""
    rng = np.random.default_rng(seed)
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    cams = np.zeros((k, h, w), np.float32)
    for c in range(k):
        for _ in range(2):
            cy, cx = rng.uniform(0, h), rng.uniform(0, w)
            sy, sx = rng.uniform(0.05, 0.2) * h, rng.uniform(0.05, 0.2) * w
            cams[c] += np.exp(-(((ys - cy) / sy) ** 2 + ((xs - cx) / sx) ** 2) / 2)
        cams[c] /= cams[c].max() + 1e-5
    return cams


def synthetic_probs(h: int, w: int, k: int, seed: int = 0, temperature: float = 0.15) -> np.ndarray:
    """Softmax probabilities (k, h, w) float32 from CAM blobs plus a constant background plane."""
    cams = synthetic_cams(h, w, k - 1, seed)
    logits = np.concatenate([np.full((1, h, w), 0.3, np.float32), cams]) / temperature
    logits -= logits.max(axis=0, keepdims=True)
    e = np.exp(logits)
    return (e / e.sum(axis=0, keepdims=True)).astype(np.float32)


def _timed(fn: Callable[[], Any], repeats: int) -> tuple[float, float, Any]:
    """Best wall-clock and best process-CPU seconds over ``repeats`` calls, and the result."""
    wall = cpu = float("inf")
    out = None
    for _ in range(repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        out = fn()
        wall = min(wall, time.perf_counter() - t0)
        cpu = min(cpu, time.process_time() - c0)
    return wall, cpu, out


def _record(best: dict[str, list[float]], key: str, fn: Callable[[], Any]) -> Any:
    """Time one call, keeping the best [wall, cpu] seconds under ``key``; return its result."""
    wall, cpu, out = _timed(fn, 1)
    prev = best.get(key, [float("inf"), float("inf")])
    best[key] = [min(prev[0], wall), min(prev[1], cpu)]
    return out


def _peak_mib(fn: Callable[[], Any]) -> float:
    """Peak Python-heap allocation (tracemalloc; NumPy buffers are traced) in MiB."""
    tracemalloc.start()
    tracemalloc.reset_peak()
    fn()
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return peak / 2**20


# The paper's CRF kernels (method.md §9.8): pydensecrf Gaussian(sxy 3, compat 3) +
# bilateral(sxy 50, srgb 5, compat 10); the defaults of `postprocess.crf`.
_PAPER_KERNELS = {
    "gauss_sxy": 3.0,
    "gauss_compat": 3.0,
    "bilateral_sxy": 50.0,
    "bilateral_srgb": 5.0,
    "bilateral_compat": 10.0,
}


def _pydensecrf(image, unary, labels, k, gt, t, kernels):
    """pydensecrf2 on a label map (`unary` "labels", gt_prob `gt`) or softmax probabilities."""
    import pydensecrf.densecrf as dcrf
    from pydensecrf.utils import unary_from_labels, unary_from_softmax

    h, w = image.shape[:2]
    d = dcrf.DenseCRF2D(w, h, k)
    if unary == "labels":
        d.setUnaryEnergy(unary_from_labels(labels, k, gt, zero_unsure=False))
    else:
        d.setUnaryEnergy(np.ascontiguousarray(unary_from_softmax(labels)))
    d.addPairwiseGaussian(sxy=kernels["gauss_sxy"], compat=kernels["gauss_compat"])
    d.addPairwiseBilateral(
        sxy=kernels["bilateral_sxy"],
        srgb=kernels["bilateral_srgb"],
        rgbim=image,
        compat=kernels["bilateral_compat"],
    )
    return np.array(d.inference(t)).reshape(k, h, w)


def _crf_cases(h: int, w: int, k: int) -> dict[str, tuple[Callable, Callable]]:
    """The pipeline's CRF settings on one synthetic image: name -> (ours, pydensecrf2)."""
    from pnoc_jax.postprocess.crf import dense_crf, dense_crf_labels

    image = synthetic_photo(h, w, seed=1)
    probs = synthetic_probs(h, w, k, seed=2)
    labels = probs.argmax(axis=0)
    return {
        f"labels_gt0.7_t10_k{k}": (
            lambda: dense_crf_labels(image, labels, k, 0.7, 10),
            lambda: _pydensecrf(image, "labels", labels, k, 0.7, 10, _PAPER_KERNELS),
        ),
        f"labels_gt0.9_t1_k{k}": (
            lambda: dense_crf_labels(image, labels, k, 0.9, 1),
            lambda: _pydensecrf(image, "labels", labels, k, 0.9, 1, _PAPER_KERNELS),
        ),
        f"probs_t10_k{k}": (
            lambda: dense_crf(image, probs, 10),
            lambda: _pydensecrf(image, "probs", probs, k, 0.0, 10, _PAPER_KERNELS),
        ),
    }


def _child_rss_mib(h: int, w: int, k: int, case: str, impl: str) -> float | None:
    """Peak-RSS increase (MiB) of one CRF call in a fresh process (covers C++ allocations).

    Linux only (/proc/self/clear_refs); None where unavailable.
    """
    cmd = [sys.executable, "-m", "pnoc_jax.cpu_benchmark", "--child", f"{h},{w},{k}"]
    cmd += [case, impl]
    try:
        res = subprocess.run(cmd, capture_output=True, text=True, check=True, timeout=300)
        return round(float(res.stdout.strip().splitlines()[-1]), 1)
    except (subprocess.SubprocessError, ValueError, IndexError):
        return None


def _proc_status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


def _child(spec: str, case: str, impl: str) -> None:
    h, w, k = (int(v) for v in spec.split(","))
    fn = _crf_cases(h, w, k)[case][0 if impl == "ours" else 1]
    import gc

    gc.collect()
    before = _proc_status_kib("VmRSS")
    with open("/proc/self/clear_refs", "w") as f:  # reset the peak (VmHWM) to the current RSS
        f.write("5")
    fn()
    print((_proc_status_kib("VmHWM") - before) / 1024)


def bench_crf(h: int = 375, w: int = 500, k: int = 21, repeats: int = 3) -> dict[str, Any]:
    """Per-image CRF times for the pipeline settings, ours vs pydensecrf2 (same inputs).

    ours_*: the image-independent position-kernel lattice is cached per image size (as when a
    worker processes a dataset); ours_cold_* clears that cache before every call. Best wall and
    best process-CPU time over ``repeats`` interleaved calls.
    """
    from pnoc_jax.postprocess.crf import _position_lattice

    try:
        import pydensecrf.densecrf  # noqa: F401

        have_ref = True
    except ImportError:
        have_ref = False

    def cold(fn: Callable[[], Any]) -> Callable[[], Any]:
        return lambda: (_position_lattice.cache_clear(), fn())[1]

    out: dict[str, Any] = {"image_hw": [h, w], "pydensecrf2": have_ref}
    for name, (ours, ref) in _crf_cases(h, w, k).items():
        best: dict[str, list[float]] = {}
        for _ in range(repeats):  # interleaved, so machine load affects all alike
            q_ours = _record(best, "ours", ours)
            _record(best, "cold", cold(ours))
            if have_ref:
                q_ref = _record(best, "ref", ref)
        row: dict[str, Any] = {
            "ours_s": round(best["ours"][0], 4),
            "ours_cold_s": round(best["cold"][0], 4),
            "ours_cpu_s": round(best["ours"][1], 4),
            "ours_cold_cpu_s": round(best["cold"][1], 4),
            "ours_tracemalloc_peak_mib": round(_peak_mib(cold(ours)), 1),
            "ours_rss_increase_mib": _child_rss_mib(h, w, k, name, "ours"),
        }
        if have_ref:
            row |= {
                "pydensecrf2_s": round(best["ref"][0], 4),
                "pydensecrf2_cpu_s": round(best["ref"][1], 4),
                "pydensecrf2_rss_increase_mib": _child_rss_mib(h, w, k, name, "ref"),
                "ratio_ours_over_ref": round(best["ours"][0] / best["ref"][0], 3),
                "ratio_cold_over_ref": round(best["cold"][0] / best["ref"][0], 3),
                "cpu_ratio_ours_over_ref": round(best["ours"][1] / best["ref"][1], 3),
                "cpu_ratio_cold_over_ref": round(best["cold"][1] / best["ref"][1], 3),
                "argmax_agreement": float((q_ours.argmax(0) == q_ref.argmax(0)).mean()),
                "marginal_mad": float(np.abs(q_ours - q_ref).mean()),
                "marginal_max_abs_diff": float(np.abs(q_ours - q_ref).max()),
            }
        out[name] = row
    return out


def pipeline_crf_settings() -> dict[str, tuple[str, int, float, int, dict[str, float]]]:
    """The dense-CRF settings of the pipeline (method.md §9.8): name -> (unary, classes,
    gt_prob, iterations, kernels). "labels": a label map of `classes` labels (background
    included: 2 for saliency masks, 1 + the classes present for affinity and pseudo-labels);
    "probs": a segmentation network's softmax over every class (DeepLab's test time: VOC's 21,
    COCO's 81)."""
    from pnoc_jax.segmentation.tasks import CRF_KERNELS  # no jax import

    return {
        "saliency_masks_k2_t10": ("labels", 2, 0.7, 10, _PAPER_KERNELS),
        "affinity_labels_k3_t10": ("labels", 3, 0.7, 10, _PAPER_KERNELS),
        "affinity_labels_k6_t10": ("labels", 6, 0.7, 10, _PAPER_KERNELS),
        "pseudo_labels_k3_t1": ("labels", 3, 0.9, 1, _PAPER_KERNELS),
        "pseudo_labels_k6_t1": ("labels", 6, 0.9, 1, _PAPER_KERNELS),
        "deeplab_probs_k21_t10": ("probs", 21, 0.0, 10, CRF_KERNELS),
        "deeplab_probs_k81_t10": ("probs", 81, 0.0, 10, CRF_KERNELS),
    }


def read_photo(path: str, longer_side: int = 500) -> np.ndarray:
    """A photograph as uint8 RGB, its longer side resized to `longer_side` (VOC's size)."""
    image = cv2.imread(path, cv2.IMREAD_COLOR)
    if image is None:
        raise ValueError(f"{path}: not an image OpenCV can read")
    h, w = image.shape[:2]
    scale = longer_side / max(h, w)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    return np.ascontiguousarray(cv2.resize(image, size, interpolation=cv2.INTER_AREA)[..., ::-1])


def photo_label_map(image: np.ndarray, k: int, seed: int = 0) -> np.ndarray:
    """A CAM-like int64 (H, W) label map of `k` classes for a photograph: k-means of colour
    and position on a 1/16 grid, upsampled (blocky regions that follow the image's content,
    as thresholded CAMs do)."""
    h, w = image.shape[:2]
    small = cv2.resize(image, (max(1, w // 16), max(1, h // 16)), interpolation=cv2.INTER_AREA)
    gh, gw = small.shape[:2]
    ys, xs = np.mgrid[0:gh, 0:gw]
    features = np.concatenate(
        [small.reshape(-1, 3) / 255.0, np.stack([ys.ravel() / gh, xs.ravel() / gw], 1)], 1
    ).astype(np.float32)
    cv2.setRNGSeed(seed)
    criteria = (cv2.TERM_CRITERIA_MAX_ITER, 20, 0.0)
    clusters = min(k, len(features))  # a tiny image has fewer grid cells than classes
    _, labels, _ = cv2.kmeans(features, clusters, None, criteria, 3, cv2.KMEANS_PP_CENTERS)
    labels = labels.reshape(gh, gw).astype(np.uint8)
    return cv2.resize(labels, (w, h), interpolation=cv2.INTER_NEAREST).astype(np.int64)


def photo_probs(labels: np.ndarray, k: int, seed: int = 0) -> np.ndarray:
    """Segmentation-network-like softmax (k, H, W) float32 around a label map: smoothed
    one-hot logits plus noise, every class present somewhere."""
    rng = np.random.default_rng(seed)
    one_hot = (labels[..., None] == np.arange(k)).astype(np.float32) * 4.0
    logits = cv2.GaussianBlur(one_hot, (0, 0), 6.0).reshape(*labels.shape, k)
    logits += rng.normal(0.0, 0.3, logits.shape).astype(np.float32)
    logits = logits.transpose(2, 0, 1)
    e = np.exp(logits - logits.max(axis=0, keepdims=True))
    return (e / e.sum(axis=0, keepdims=True)).astype(np.float32)


def _ours(image, unary, labels, k, gt, t, kernels):
    from pnoc_jax.postprocess.crf import dense_crf, dense_crf_labels

    if unary == "labels":
        return dense_crf_labels(image, labels, k, gt, t, **kernels)
    return dense_crf(image, labels, t, **kernels)


def bench_crf_photos(paths: list[str], repeats: int = 3, longer_side: int = 500) -> dict[str, Any]:
    """Ours vs pydensecrf2 on real photographs (resized to VOC's 500 px) in every CRF setting
    of the pipeline (`pipeline_crf_settings`): best wall time of `repeats` interleaved calls
    per photo, the ratio ours / pydensecrf2 per photo and its worst case per setting, and the
    argmax agreement. The position lattice is cached per image size, as in a worker."""
    try:
        import pydensecrf.densecrf  # noqa: F401
    except ImportError:
        return {"skipped": "pydensecrf2 is not installed"}
    out: dict[str, Any] = {"photos": [os.path.basename(p) for p in paths], "settings": {}}
    images = {path: read_photo(path, longer_side) for path in paths}
    for name, (unary, k, gt, t, kernels) in pipeline_crf_settings().items():
        rows = {}
        for path, image in images.items():
            labels = photo_label_map(image, k)
            if unary == "probs":
                labels = photo_probs(labels, k)
            args = (image, unary, labels, k, gt, t, kernels)
            best: dict[str, list[float]] = {}
            for _ in range(repeats):
                q_ours = _record(best, "ours", lambda args=args: _ours(*args))
                q_ref = _record(best, "ref", lambda args=args: _pydensecrf(*args))
            rows[os.path.basename(path)] = {
                "hw": list(image.shape[:2]),
                "ours_s": round(best["ours"][0], 4),
                "pydensecrf2_s": round(best["ref"][0], 4),
                "ratio": round(best["ours"][0] / best["ref"][0], 3),
                "argmax_agreement": round(float((q_ours.argmax(0) == q_ref.argmax(0)).mean()), 6),
            }
        out["settings"][name] = {
            "worst_ratio": max(r["ratio"] for r in rows.values()),
            "mean_ratio": round(float(np.mean([r["ratio"] for r in rows.values()])), 3),
            "photos": rows,
        }
    out["worst_ratio"] = max(s["worst_ratio"] for s in out["settings"].values())
    return out


def scikit_image_photos() -> list[str]:
    """The colour photographs that scikit-image ships, read as files where the package is
    installed (it is not a dependency); [] otherwise."""
    import importlib.util

    spec = importlib.util.find_spec("skimage")
    if spec is None or not spec.submodule_search_locations:
        return []
    folder = os.path.join(spec.submodule_search_locations[0], "data")
    names = ("astronaut.png", "chelsea.png", "coffee.png", "rocket.jpg", "motorcycle_left.png")
    return [os.path.join(folder, n) for n in names if os.path.exists(os.path.join(folder, n))]


def bench_crf_sweep(h: int = 375, w: int = 500, k: int = 3, repeats: int = 2) -> dict[str, Any]:
    """The CRF variant of a 16-threshold sweep on one image (`evaluation.crf_tasks`): the 16
    maps argmax([t, cams]) refined together by `crf_label_maps` (lattices once), one by one
    (`crf_label_map`), and by pydensecrf2 one by one (the reference's loop), for the prior
    (t 10, gt 0.7) and the random-walk (t 1, gt 0.9) settings. `k` planes incl. background."""
    from pnoc_jax.evaluation.crf_tasks import threshold_label_maps
    from pnoc_jax.postprocess.crf import crf_label_map, crf_label_maps

    try:
        import pydensecrf.densecrf  # noqa: F401

        have_ref = True
    except ImportError:
        have_ref = False
    image = synthetic_photo(h, w, seed=5)
    cams = synthetic_cams(h, w, k - 1, seed=6)
    maps = threshold_label_maps(cams, np.round(np.arange(0.05, 0.81, 0.05), 2))
    out: dict[str, Any] = {"image_hw": [h, w], "labels": k, "thresholds": len(maps)}
    for t, gt in ((10, 0.7), (1, 0.9)):
        cases = {
            "batched": lambda t=t, gt=gt: crf_label_maps(image, maps, k, gt, t),
            "one_by_one": lambda t=t, gt=gt: [crf_label_map(image, m, k, gt, t) for m in maps],
        }
        if have_ref:
            cases["pydensecrf2"] = lambda t=t, gt=gt: [
                _pydensecrf(image, "labels", m, k, gt, t, _PAPER_KERNELS) for m in maps
            ]
        best: dict[str, list[float]] = {}
        for _ in range(repeats):
            for name, fn in cases.items():
                _record(best, name, fn)
        out[f"t{t}_gt{gt}"] = {
            f"{name}_{unit}": round(v, 3)
            for name, (wall, cpu) in best.items()
            for unit, v in (("s", wall), ("cpu_s", cpu))
        }
    return out


def bench_random_walk(h: int = 94, w: int = 125, k: int = 3, repeats: int = 3) -> dict[str, Any]:
    """Random walk (R=5, beta=10, exp_times=8) on a VOC-sized stride-4 problem."""
    from pnoc_jax.affinity.random_walk import random_walk

    rng = np.random.default_rng(3)
    cams = synthetic_cams(h, w, k, seed=4)
    edge = cv2.GaussianBlur(rng.random((h, w)).astype(np.float32), (0, 0), 2.0)
    edge = (edge - edge.min()) / (edge.max() - edge.min())
    fn = lambda: random_walk(cams, edge, beta=10, exp_times=8, radius=5)
    wall, cpu, _ = _timed(fn, repeats)
    return {
        "cam_hw": [h, w],
        "n_classes": k,
        "nodes": h * w,
        "seconds": round(wall, 4),
        "cpu_seconds": round(cpu, 4),
        "peak_mib": round(_peak_mib(fn), 1),
    }


def bench_input(images: int = 32, h: int = 375, w: int = 500) -> dict[str, Any]:
    """Host input per CPU core: JPEG decode + the VOC recipe's classification transform (random
    resize of the longer side to 320-640, flip, crop 512, normalise) with each augmentation,
    one image at a time in this thread: what one grain worker process delivers."""
    from pnoc_jax.data import transforms

    jpegs = [
        cv2.imencode(".jpg", synthetic_photo(h, w, seed=i)[..., ::-1])[1].tobytes()
        for i in range(8)
    ]
    result: dict[str, Any] = {"image_hw": [h, w], "crop": 512}
    for augment in ("none", "colorjitter", "randaugment"):
        transform = transforms.make_classification_transform(512, 320, 640, augment)
        rng = np.random.default_rng(0)

        def run(transform=transform, rng=rng) -> None:
            for i in range(images):
                decoded = cv2.imdecode(np.frombuffer(jpegs[i % 8], np.uint8), cv2.IMREAD_COLOR)
                example = {"image": decoded[..., ::-1], "labels": np.eye(20, dtype=np.float32)[0]}
                transform(example, rng)

        _, cpu, _ = _timed(run, 2)
        result[f"{augment}_images_per_s_per_core"] = round(images / cpu, 1)
    return result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--skip-rw", action="store_true")
    parser.add_argument(
        "--sweep-only", action="store_true", help="only the CRF sweep (bench_crf_sweep)"
    )
    parser.add_argument(
        "--photos",
        nargs="*",
        default=None,
        help="photographs for the real-photo CRF benchmark (default: scikit-image's colour "
        "photos where scikit-image is installed); with --photos-only nothing else runs",
    )
    parser.add_argument("--photos-only", action="store_true")
    parser.add_argument(
        "--child", nargs=3, metavar=("H,W,K", "CASE", "IMPL"), help=argparse.SUPPRESS
    )
    args = parser.parse_args(argv)
    if args.child:
        _child(*args.child)
        return
    result: dict[str, Any] = {
        "machine": platform.processor() or platform.machine(),
        "threads": os.environ.get("OMP_NUM_THREADS"),
        "load_average_before": [round(v, 2) for v in os.getloadavg()],
    }
    photos = scikit_image_photos() if args.photos is None else args.photos
    if args.photos_only and not photos:
        parser.error("--photos-only: no photographs; pass --photos FILE... or install scikit-image")
    if photos and not args.sweep_only:
        result["crf_photos"] = bench_crf_photos(photos, repeats=args.repeats)
    if args.photos_only:
        print(json.dumps(result, indent=2))
        return
    if not args.sweep_only:
        result["crf_k21"] = bench_crf(k=21, repeats=args.repeats)
        result["crf_k3"] = bench_crf(k=3, repeats=args.repeats)
    result["crf_sweep_voc"] = bench_crf_sweep(375, 500, repeats=min(args.repeats, 2))
    result["crf_sweep_coco"] = bench_crf_sweep(480, 640, repeats=min(args.repeats, 2))
    if not args.skip_rw and not args.sweep_only:
        result["random_walk"] = bench_random_walk(repeats=args.repeats)
    if not args.sweep_only:
        result["input"] = bench_input()
    result["load_average_after"] = [round(v, 2) for v in os.getloadavg()]
    result["process_max_rss_mib"] = round(
        resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1
    )
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
