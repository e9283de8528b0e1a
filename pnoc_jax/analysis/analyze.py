"""Stage `analyze`: the paper's class analysis (Tables 1 and 3, method.md §15) of a run or of a
strategy comparison, and the paper's claims that the run can check.

Columns: in a pipeline run, every per-class IoU its evaluations wrote (priors, priors with the
CRF, priors with each saliency source as background, random walk, pseudo-labels, segmentation,
the fully supervised bound); in `compare`, one column per strategy (mean over seeds). The class
properties are those of the split each column was evaluated on, computed once per dataset
identity and split and cached beside the dataset (`<data_dir>/class_properties/`).

Writes `<workdir>/analyze/`: `class_groups.{md,csv,json}`, `class_groups.png` (groups ×
columns, values in the cells) and `iou_vs_size.png` (IoU against %S per class) per split
(a split other than `config.eval.split` gets a `_<split>` suffix), and `metrics.json`
(the claims and how many held; `summary.md` lists them).
"""

import os
from collections.abc import Sequence

import ml_collections
import numpy as np
from absl import logging

from pnoc_jax import config_lib
from pnoc_jax.analysis import claims as claims_lib
from pnoc_jax.core import artifacts, distributed, fileio
from pnoc_jax.data import datasets
from pnoc_jax.data.builders import coco2014, synthetic
from pnoc_jax.evaluation import class_groups

STAGE = "analyze"
# The stages whose per-class IoU become columns, in the pipeline's order.
EVALUATIONS = (
    "eval_cam", "eval_saliency", "eval_pseudo_labels", "eval_segmentation",
    "eval_segmentation_gt", "compare",
)  # fmt: skip
SALIENCY_TITLES = {"infer_saliency": "C²AM-H masks", "infer_detector": "detector"}
# The semantic groups of each dataset (`config.analysis.groups` replaces them).
DEFAULT_GROUPS: dict[str, dict[str, list[str]]] = {
    "voc2012": class_groups.PAPER_VOC_GROUPS,
    "coco2014": {name: list(names) for name, names in coco2014.SUPERCATEGORIES.items()},
    "synthetic": synthetic.CLASS_GROUPS,
}


def deps(config: ml_collections.ConfigDict) -> tuple[str, ...]:
    """The selected evaluation stages: the analysis reads their metrics."""
    return tuple(s for s in EVALUATIONS if s in config.stages)


# ---------------------------------------------------------------------------- inputs


def _percent(per_class: dict) -> dict[str, float]:
    return {
        name: 100.0 * float(v) if v is not None else float("nan") for name, v in per_class.items()
    }


def pipeline_columns(metrics: dict[str, dict]) -> dict[str, dict[str, dict[str, float]]]:
    """{split: {column: {class: IoU %}}} from {stage: metrics.json} of a pipeline run."""
    out: dict[str, dict[str, dict[str, float]]] = {}

    def add(split: str, column: str, per_class: dict | None) -> None:
        if per_class:
            out.setdefault(split, {})[column] = _percent(per_class)

    if cam := metrics.get("eval_cam"):
        add(cam["split"], "priors", cam["per_class_iou"])
        add(cam["split"], "priors + CRF", cam.get("crf", {}).get("per_class_iou"))
    if saliency := metrics.get("eval_saliency"):
        for source in saliency.get("source_order", list(saliency["sources"])):
            title = SALIENCY_TITLES.get(source, source)
            per_class = saliency["sources"][source]["priors_with_saliency_per_class_iou"]
            add(saliency["split"], f"priors, {title} bg", per_class)
    if labels := metrics.get("eval_pseudo_labels"):
        add(labels["split"], "RW", labels["per_class_iou"])
        add(labels["split"], "RW + CRF", labels.get("crf", {}).get("per_class_iou"))
        add(labels["split"], "pseudo-labels", labels.get("pseudo_label_per_class_iou"))
    for stage, title in (
        ("eval_segmentation", "segmentation"),
        ("eval_segmentation_gt", "fully sup."),
    ):
        if seg := metrics.get(stage):
            crf = seg.get("crf_iterations", 0) > 0
            no_crf = seg.get("splits", {}).get(seg["split"], {}).get("no_crf", {})
            add(seg["split"], title, no_crf.get("per_class_iou") if crf else seg["per_class_iou"])
            if crf:
                add(seg["split"], f"{title} + CRF", seg["per_class_iou"])
    return out


def compare_runs(config: ml_collections.ConfigDict, workdir: str) -> dict[str, list[dict]]:
    """{strategy: [eval_cam metrics.json of each seed]} of a finished `compare`."""
    return {
        strategy: [
            fileio.read_json(
                artifacts.metrics_file(
                    artifacts.compare_run_dir(workdir, seed, strategy), "eval_cam"
                )
            )
            for seed in config.compare.seeds
        ]
        for strategy in config.compare.strategies
    }


def compare_columns(runs: dict[str, list[dict]]) -> dict[str, dict[str, float]]:
    """{strategy: {class: IoU % averaged over seeds}}."""
    return {
        strategy: {
            name: float(np.mean([100.0 * r["per_class_iou"][name] for r in seeds]))
            for name in seeds[0]["per_class_iou"]
        }
        for strategy, seeds in runs.items()
    }


def properties(
    config: ml_collections.ConfigDict, dataset: datasets.Dataset, split: str
) -> dict[str, dict[str, float]]:
    """`class_groups.class_properties` of the whole split's ground truth, cached in
    `<data_dir>/class_properties/<dataset>-<identity hash>-<split>.json`: they depend on
    the data only."""
    identity = dataset.identity
    name = f"{config.data.name}-{config_lib.fingerprint(identity)}-{split}.json"
    path = os.path.join(fileio.expand(config.data.data_dir), "class_properties", name)
    if fileio.exists(path):
        cached = fileio.read_json(path)
        if cached.get("identity") == identity and cached.get("split") == split:
            return cached["properties"]
    source = dataset.split(split, whole=True)
    examples = ((source[i]["mask"], source[i]["labels"]) for i in range(len(source)))
    props = class_groups.class_properties(examples, dataset.class_names)
    fileio.write_json(path, {"identity": identity, "split": split, "properties": props})
    logging.info("analyze: class properties of %s/%s cached in %s", config.data.name, split, path)
    return props


def parse_groups(
    entries: Sequence[str], class_names: Sequence[str], key: str
) -> dict[str, list[str]]:
    """("name=class,class", ...) -> {name: [classes]}; ConfigError naming the entry otherwise."""
    out = {}
    for entry in entries:
        name, _, members = str(entry).partition("=")
        names = [m.strip() for m in members.split(",") if m.strip()]
        unknown = [m for m in names if m not in class_names]
        config_lib.check(
            bool(name.strip()) and bool(names) and not unknown and name.strip() not in out,
            key,
            entry,
            "a distinct 'group=class,class,...' over the dataset's classes"
            + (f" (unknown: {unknown})" if unknown else ""),
        )
        out[name.strip()] = names
    return out


def groups_for(
    config: ml_collections.ConfigDict, class_names: Sequence[str], props: dict
) -> dict[str, list[str]]:
    """The semantic groups (`config.analysis.groups`, or the dataset's) and, with
    `config.analysis.tertiles`, the size and frequency tertiles of `props`."""
    if config.analysis.groups:
        groups = parse_groups(config.analysis.groups, class_names, "analysis.groups")
    else:
        groups = dict(DEFAULT_GROUPS.get(config.data.name, {}))
    if config.analysis.tertiles:
        for prop, names in class_groups.TERTILE_NAMES.items():
            groups.update(class_groups.tertile_groups(props, prop, names))
    return groups


# ---------------------------------------------------------------------------- figures


def heatmap(tab: dict, title: str, path: str) -> None:
    """Groups (rows) × IoU columns with the values in the cells, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    columns = [c for c in tab["columns"] if c not in class_groups.PROPERTIES]
    rows = [*tab["groups"], "overall"]
    values = np.array(
        [[(tab["overall"] if r == "overall" else tab["groups"][r]).get(c, np.nan) for c in columns]
         for r in rows]
    )  # fmt: skip
    fig, ax = plt.subplots(figsize=(2.0 + 1.1 * len(columns), 1.2 + 0.4 * len(rows)))
    finite = values[~np.isnan(values)]
    low, high = (finite.min(), finite.max()) if finite.size else (0.0, 100.0)
    ax.imshow(values, cmap="viridis", vmin=low, vmax=high, aspect="auto")  # contrast: data range
    ax.set_xticks(range(len(columns)), columns, rotation=30, ha="right")
    ax.set_yticks(range(len(rows)), rows)
    for i in range(len(rows)):
        for j in range(len(columns)):
            if not np.isnan(values[i, j]):
                color = "black" if values[i, j] > (low + high) / 2 else "white"
                ax.text(j, i, f"{values[i, j]:.1f}", ha="center", va="center", fontsize=8,
                        color=color)  # fmt: skip
    ax.set_title(title)
    fig.tight_layout()
    with fileio.atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)


def size_scatter(tab: dict, title: str, path: str) -> None:
    """IoU against %S, one point per class and column, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    columns = [c for c in tab["columns"] if c not in class_groups.PROPERTIES]
    names = list(tab["classes"])
    size = np.array([tab["classes"][n]["%S"] for n in names])
    fig, ax = plt.subplots(figsize=(7, 4.5))
    markers = "os^vD<>pP*Xh"
    for k, column in enumerate(columns):
        iou = np.array([tab["classes"][n].get(column, np.nan) for n in names])
        rho = tab["correlations"]["%S"].get(column, np.nan)
        ax.scatter(
            size, iou, s=18, marker=markers[k % len(markers)], label=f"{column} (ρ {rho:.0f})"
        )
    if len(names) <= 30:
        for n, x in zip(names, size, strict=True):
            ax.annotate(n, (x, 2), fontsize=7, rotation=90, ha="center", va="bottom", alpha=0.6)
    ax.set_xlabel("%S: mean share of the image (%)")
    ax.set_ylabel("IoU (%)")
    ax.set_ylim(0, 100)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.0, 0.5))
    fig.tight_layout()
    with fileio.atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)


# ---------------------------------------------------------------------------- the stage


def _suffix(config: ml_collections.ConfigDict, split: str) -> str:
    return "" if split == config.eval.split else f"_{split}"


def output_files(
    config: ml_collections.ConfigDict, workdir: str, splits: Sequence[str]
) -> list[str]:
    """Every file the stage writes for `splits`."""
    folder = artifacts.stage_dir(workdir, STAGE)
    names = ["metrics.json", "class_groups.md", "class_groups.csv", "class_groups.json"]
    for split in splits:
        s = _suffix(config, split)
        names += [f"class_groups{s}.png", f"iou_vs_size{s}.png"]
    return [os.path.join(folder, n) for n in dict.fromkeys(names)]


def run(config: ml_collections.ConfigDict, workdir: str, dataset: datasets.Dataset) -> None:
    if not distributed.is_chief():
        return
    stages = deps(config)
    metrics = {
        s: fileio.read_json(artifacts.metrics_file(workdir, s)) for s in stages if s != "compare"
    }
    columns = pipeline_columns(metrics)
    claims = claims_lib.pipeline_claims(metrics)
    runs = compare_runs(config, workdir) if "compare" in stages else {}
    if runs:
        columns.setdefault(config.eval.split, {}).update(compare_columns(runs))
    tables = {}
    for split, iou in columns.items():
        props = properties(config, dataset, split)
        groups = groups_for(config, dataset.class_names, props)
        tables[split] = class_groups.table(props, iou, groups)
    if runs:
        claims += _compare_claims(runs, tables[config.eval.split]["group_members"])
    write(config, workdir, tables, claims)


def _compare_claims(runs: dict[str, list[dict]], groups: dict[str, list[str]]) -> list[dict]:
    """`claims.compare_claims` from the per-seed metrics: mIoU and group means per seed."""
    mious = {s: [100.0 * r["miou"] for r in seeds] for s, seeds in runs.items()}
    per_group: dict[str, dict[str, list[float]]] = {}
    for strategy, seeds in runs.items():
        for run_metrics in seeds:
            per_class = {n: {"iou": 100.0 * v} for n, v in run_metrics["per_class_iou"].items()}
            per_class.pop("background", None)
            for group, means in class_groups.group_means(per_class, groups).items():
                per_group.setdefault(group, {}).setdefault(strategy, []).append(means["iou"])
    return claims_lib.compare_claims(mious, per_group)


def write(
    config: ml_collections.ConfigDict, workdir: str, tables: dict, claims: list[dict]
) -> None:
    """The report files (`class_groups.json`: {split: table}) and metrics.json (the claims)."""
    folder = artifacts.stage_dir(workdir, STAGE)
    md, csv = [], []
    for split, tab in tables.items():
        md += [f"## {config.data.name} {split}", "", class_groups.to_markdown(tab)]
        lines = class_groups.to_csv(tab, prefix=(("split", split),)).splitlines()
        csv += lines if not csv else lines[1:]
        s = _suffix(config, split)
        title = f"{config.data.name} {split}"
        heatmap(
            tab, f"IoU (%) per class group, {title}", os.path.join(folder, f"class_groups{s}.png")
        )
        size_scatter(
            tab, f"IoU against relative size, {title}", os.path.join(folder, f"iou_vs_size{s}.png")
        )
    groups_note = ", ".join(
        f"{g}: {' '.join(m)}" for g, m in next(iter(tables.values()))["group_members"].items()
    ) if tables else ""  # fmt: skip
    head = (
        "# Class properties, class groups and correlations (the paper's Table 3)\n\n"
        "O: images holding the class; %S: its mean share of those images' pixels; %C: share of "
        "them holding another class; L: mean number of classes in them. IoU columns in %; group "
        "rows are means over the group's classes; ρ rows are Pearson's ρ × 100 over the "
        f"foreground classes.\n\nGroups: {groups_note}.\n\n"
    )
    fileio.write_text(os.path.join(folder, "class_groups.md"), head + "\n".join(md))
    fileio.write_text(os.path.join(folder, "class_groups.csv"), "\n".join(csv) + "\n")
    fileio.write_json(os.path.join(folder, "class_groups.json"), tables)
    held = sum(c["holds"] for c in claims)
    fileio.write_json(
        artifacts.metrics_file(workdir, STAGE),
        {
            "splits": sorted(tables),
            "claims": claims,
            "claims_held": held,
            "claims_checked": len(claims),
        },
    )


def missing(
    config: ml_collections.ConfigDict, workdir: str, dataset: datasets.Dataset
) -> list[str]:
    del dataset
    path = artifacts.metrics_file(workdir, STAGE)
    if not fileio.exists(path):
        return [path]
    return artifacts.missing(output_files(config, workdir, fileio.read_json(path)["splits"]))


def headline(metrics: dict) -> str:
    held = sum(c["holds"] for c in metrics["claims"])
    return (
        f"class groups of {', '.join(metrics['splits'])} in analyze/class_groups.md; "
        f"paper's claims held: {held} of {len(metrics['claims'])}"
    )


def summary_line(metrics: dict) -> str:
    """Its row in summary.md: links to the table and the figures (relative to the workdir)."""
    held = sum(c["holds"] for c in metrics["claims"])
    links = ", ".join(
        f"[{name}]({STAGE}/{name})"
        for name in ("class_groups.md", "class_groups.png", "iou_vs_size.png", "class_groups.csv")
    )
    return (
        f"class groups (Table 3): {links}; paper's claims held: {held} of {len(metrics['claims'])}"
    )


def summary_notes(metrics: dict) -> str:
    """The claims list under the summary's table."""
    return claims_lib.to_markdown(metrics["claims"])


def validate_order(config: ml_collections.ConfigDict, topology: config_lib.Topology) -> None:
    """analyze follows at least one evaluation stage."""
    del topology
    stages = tuple(config.stages)
    before = stages[: stages.index(STAGE)] if STAGE in stages else stages
    config_lib.check(
        any(s in before for s in EVALUATIONS),
        "stages",
        stages,
        f"{STAGE!r} after at least one of {list(EVALUATIONS)}",
    )


def validate(config: ml_collections.ConfigDict, topology: config_lib.Topology) -> None:
    """Checks of `config.analysis`: its groups name the dataset's classes."""
    del topology
    config_lib.check(
        isinstance(config.analysis.tertiles, bool), "analysis.tertiles", config.analysis.tertiles,
        "True or False",
    )  # fmt: skip
    class_names = datasets.get_info(config.data.name).class_names
    parse_groups(config.analysis.groups, class_names, "analysis.groups")
