"""The paper's claims a run can check (method.md §15), each with both sides' numbers, the
paper's figures and whether it held. Pure functions over metrics already written.

A claim is an ordering `left ≥ right + offset` in mIoU points (%). How far it is from flipping
is its margin, `left − right − offset`. One run is not enough to call a small margin: the
quickstart config trained with its epochs cut to 1 on 1 process × 8 devices and on 2 processes
× 4 devices ended 2.6 mIoU points apart on the priors (49.0 vs 51.6; float reduction order,
amplified over 125 training steps per network). So a margin under `NOISE` points from one run
is marked "within noise"; with seeds (`compare`), an ordering that holds at every seed counts.
"""

import itertools
from collections.abc import Mapping, Sequence

import numpy as np

NOISE = 2.5  # mIoU points: the spread of one config between two device layouts, rounded down

# The paper's figures (VOC 2012, ResNeSt-269; method.md §14 lists the tables).
PAPER = {
    "priors": 63.6,  # P-NOC + LS priors, train, TTA, mean of 3 runs (Table 2)
    "priors_masks": 67.9,  # priors with the C²AM-H masks as background (Table 6)
    "priors_detector": 70.8,  # ... with PoolNet trained on them as background (Table 6)
    "pseudo_labels_train": 75.5,  # RW pseudo-labels, train (Table 7)
    "pseudo_labels_val": 74.4,  # ... val (Table 7)
    "segmentation": 73.8,  # DeepLabV3+ RS269 val, with the CRF (Table 8)
    "supervised": 80.6,  # the same network fully supervised, val (Table 8)
    # Priors per strategy (Table 2, RS269, LS where the paper has it).
    "cam": 53.9,
    "puzzle": 60.9,
    "poc": 61.8,
    "pnoc": 63.6,
}
STRATEGY_TITLES = {
    "cam": "CAM", "puzzle": "Puzzle-CAM", "occse": "OC-CSE", "poc": "P-OC", "pnoc": "P-NOC",
}  # fmt: skip


def _claim(text: str, left: float, right: float, offset: float, ours: str, paper: str) -> dict:
    margin = left - right - offset
    return {
        "claim": text,
        "ours": ours,
        "paper": paper,
        "holds": bool(margin >= 0),
        "margin": float(margin),
        "beyond_noise": bool(abs(margin) >= NOISE),
    }


def _miou(metrics: Mapping, key: str = "miou") -> float:
    return 100.0 * float(metrics[key])


def pipeline_claims(metrics: Mapping[str, Mapping]) -> list[dict]:
    """The claims of one pipeline run, from {stage: metrics.json} of the stages it has.

    A claim is left out when one of its stages is missing or its two sides were evaluated on
    different splits."""
    out = []
    cam = metrics.get("eval_cam")
    labels = metrics.get("eval_pseudo_labels")
    if cam and labels and cam["split"] == labels["split"]:
        left, right = _miou(labels, "pseudo_label_miou"), _miou(cam)
        out.append(_claim(
            "RW pseudo-labels ≥ priors + 3", left, right, 3.0,
            f"{left:.2f} vs {right:.2f} ({labels['split']})",
            f"{PAPER['pseudo_labels_train']} vs {PAPER['priors']} (train)",
        ))  # fmt: skip
    saliency = metrics.get("eval_saliency")
    if saliency:
        split, priors = saliency["split"], _miou(saliency, "priors_miou")
        sources = saliency["sources"]
        for source, what, paper in (
            ("infer_saliency", "the C²AM-H masks", PAPER["priors_masks"]),
            ("infer_detector", "the detector's saliency", PAPER["priors_detector"]),
        ):
            if source in sources:
                left = _miou(sources[source], "priors_with_saliency_miou")
                out.append(_claim(
                    f"priors with {what} as background > priors", left, priors, 0.0,
                    f"{left:.2f} vs {priors:.2f} ({split})",
                    f"{paper} vs {PAPER['priors']} (train)",
                ))  # fmt: skip
        if {"infer_saliency", "infer_detector"} <= set(sources):
            left = _miou(sources["infer_detector"], "priors_with_saliency_miou")
            right = _miou(sources["infer_saliency"], "priors_with_saliency_miou")
            out.append(_claim(
                "the detector improves on its masks (priors with each as background)",
                left, right, 0.0, f"{left:.2f} vs {right:.2f} ({split})",
                f"{PAPER['priors_detector']} vs {PAPER['priors_masks']} (train)",
            ))  # fmt: skip
    segmentation = metrics.get("eval_segmentation")
    if segmentation and labels and segmentation["split"] == labels["split"]:
        left, right = _miou(segmentation), _miou(labels, "pseudo_label_miou")
        out.append(_claim(
            "segmentation (with the CRF) ≥ pseudo-labels − 2", left, right, -2.0,
            f"{left:.2f} vs {right:.2f} ({segmentation['split']})",
            f"{PAPER['segmentation']} vs {PAPER['pseudo_labels_val']} (val)",
        ))  # fmt: skip
    supervised = metrics.get("eval_segmentation_gt")
    if segmentation and supervised and segmentation["split"] == supervised["split"]:
        share = PAPER["segmentation"] / PAPER["supervised"]
        left, full = _miou(segmentation), _miou(supervised)
        out.append(_claim(
            f"weak ≥ {100 * share:.1f} % of the fully supervised bound", left, share * full, 0.0,
            f"{left:.2f} of {full:.2f} = {100 * left / full:.1f} % ({segmentation['split']})",
            f"{PAPER['segmentation']} of {PAPER['supervised']} = {100 * share:.1f} % (val)",
        ))  # fmt: skip
    return out


def _seed_claim(
    text: str, sides: tuple[str, str], left: Sequence[float], right: Sequence[float], paper: str
) -> dict:
    """`left > right` from per-seed values (paired by seed; `sides` names them): the means
    decide whether it held; it is beyond noise when it held at every one of 2 or more seeds."""
    left, right = np.asarray(left, np.float64), np.asarray(right, np.float64)
    claim = _claim(
        text, float(left.mean()), float(right.mean()), 0.0,
        f"{sides[0]} {left.mean():.2f} vs {sides[1]} {right.mean():.2f} (mean of {len(left)} "
        "seeds; per seed "
        + ", ".join(f"{a:.1f}/{b:.1f}" for a, b in zip(left, right, strict=True)) + ")",
        paper,
    )  # fmt: skip
    same_way = np.sign(left - right) == np.sign(left.mean() - right.mean())
    claim["beyond_noise"] = bool(len(left) >= 2 and same_way.all())
    return claim


def compare_claims(
    mious: Mapping[str, Sequence[float]], groups: Mapping[str, Mapping[str, Sequence[float]]]
) -> list[dict]:
    """The strategy claims of `compare`: P-NOC > P-OC > Puzzle-CAM > CAM on mIoU, and the
    group-level claims of Table 3 (P-NOC best on small and on large objects, Puzzle-CAM worst on
    `room`, CAM worst on large objects), where the strategies and groups exist.

    mious: {strategy: mIoU % per seed}; groups: {group: {strategy: group mean IoU % per seed}}.
    """
    out = []
    chain = [s for s in ("pnoc", "poc", "puzzle", "cam") if s in mious]
    for better, worse in itertools.pairwise(chain):
        titles = (STRATEGY_TITLES[better], STRATEGY_TITLES[worse])
        out.append(_seed_claim(
            f"{titles[0]} > {titles[1]} (priors mIoU)", titles,
            mious[better], mious[worse], f"{PAPER[better]} vs {PAPER[worse]} (train)",
        ))  # fmt: skip
    table3 = "Table 3 (its group values are not in this project's reference)"
    for group, strategy, best in (
        ("size small", "pnoc", True),
        ("size large", "pnoc", True),
        ("room", "puzzle", False),
        ("size large", "cam", False),
    ):
        if group not in groups or strategy not in groups[group] or len(groups[group]) < 2:
            continue
        others = {s: v for s, v in groups[group].items() if s != strategy}
        mine = groups[group][strategy]
        means = {s: float(np.mean(v)) for s, v in others.items()}
        rival = max(means, key=means.get) if best else min(means, key=means.get)
        title, rival_title = STRATEGY_TITLES[strategy], STRATEGY_TITLES[rival]
        if best:
            out.append(_seed_claim(
                f"{title} best on `{group}` (vs the next, {rival_title})",
                (title, rival_title), mine, others[rival], table3,
            ))  # fmt: skip
        else:
            out.append(_seed_claim(
                f"{title} worst on `{group}` (vs the next, {rival_title})",
                (rival_title, title), others[rival], mine, table3,
            ))  # fmt: skip
    return out


def to_markdown(claims: Sequence[Mapping]) -> str:
    """The claims as a Markdown list: ✓/✗, the claim, ours, the paper's, the margin."""
    if not claims:
        return ""
    lines = [
        "## The paper's claims",
        "",
        f"✓ held, ✗ did not. A margin under {NOISE} mIoU points from one run is within noise "
        "(the same config on two device layouts ended 2.6 points apart); with seeds, an "
        "ordering that held at every seed counts.",
        "",
    ]
    for c in claims:
        mark = "✓" if c["holds"] else "✗"
        noise = "beyond noise" if c["beyond_noise"] else "within noise"
        lines.append(
            f"- {mark} {c['claim']}: ours {c['ours']}; paper {c['paper']}; "
            f"margin {c['margin']:+.2f} ({noise})"
        )
    return "\n".join(lines) + "\n"
