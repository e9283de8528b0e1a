"""The paper's class analysis (method.md §15): class properties, class groups and the
correlation of per-class IoU with each property, laid out as the paper's Table 3.

Pure functions, no I/O. A "column" is any per-class number: the four properties (O, %S, %C, L)
and one IoU column per evaluated stage or strategy. Per-class tables are
`{class name: {column: value}}`; IoUs are in percent, as the properties %S and %C.
"""

from collections.abc import Iterable, Mapping, Sequence

import numpy as np

from pnoc_jax.core.masks import IGNORE

PROPERTIES = ("O", "%S", "%C", "L")
PerClass = Mapping[str, Mapping[str, float]]

# The paper's semantic groups of the VOC classes (names as `data.builders.voc2012` spells
# them), with the membership of the VOC devkit's own categories: person, animal, vehicle
# (the paper's "traffic") and indoor (its "room"). The paper's fifth group, "singleton", and
# its size and frequency lists are not in the reference this project was written from; size
# and frequency groups are the tertiles of %S and O measured on the analysed split instead
# (`tertile_groups`), as for every dataset.
PAPER_VOC_GROUPS: dict[str, list[str]] = {
    "person": ["person"],
    "animal": ["bird", "cat", "cow", "dog", "horse", "sheep"],
    "room": ["bottle", "chair", "diningtable", "pottedplant", "sofa", "tvmonitor"],
    "traffic": ["aeroplane", "bicycle", "boat", "bus", "car", "motorbike", "train"],
}

# Group names of the tertiles, lowest first, per property.
TERTILE_NAMES = {
    "%S": ("size small", "size mid", "size large"),
    "O": ("frequency low", "frequency mid", "frequency high"),
}


def class_properties(
    examples: Iterable[tuple[np.ndarray, np.ndarray]],
    class_names: Sequence[str] | None = None,
) -> dict[str, dict[str, float]]:
    """O, %S, %C and L of every foreground class over a split's ground truth.

    `examples` yields (mask [H, W] uint8: 0 background, k + 1 the k-th class, 255 ignored;
    labels [C] 0/1). For class k, over the images whose labels hold k: O = their number;
    %S = mean share (%) of the image's non-ignored pixels that are k; %C = share (%) of them
    holding another class too; L = mean number of classes they hold. A class in no image has
    O = 0 and NaN for the others. Keys: `class_names`, or "0", "1", ... without them.
    """
    count = size = together = cardinality = None
    for mask, labels in examples:
        labels = np.asarray(labels).reshape(-1) > 0
        if count is None:
            n = labels.size
            count, size, together, cardinality = (np.zeros(n) for _ in range(4))
        valid = int(np.count_nonzero(mask != IGNORE))
        present = np.flatnonzero(labels)
        pixels = np.bincount(mask[mask != IGNORE].ravel(), minlength=labels.size + 1)
        share = pixels[present + 1] / valid if valid else np.zeros(len(present))
        count[present] += 1
        size[present] += 100.0 * share
        together[present] += 100.0 * (len(present) > 1)
        cardinality[present] += len(present)
    if count is None:
        raise ValueError("class_properties: no examples")
    if class_names is not None and len(class_names) != count.size:
        raise ValueError(
            f"class_properties: {len(class_names)} class names for labels of {count.size} classes"
        )
    names = list(class_names) if class_names is not None else [str(k) for k in range(count.size)]
    with np.errstate(invalid="ignore", divide="ignore"):
        means = {"%S": size / count, "%C": together / count, "L": cardinality / count}
    return {
        name: {"O": float(count[k]), **{p: float(means[p][k]) for p in ("%S", "%C", "L")}}
        for k, name in enumerate(names)
    }


def _columns(per_class: PerClass) -> list[str]:
    """Every column of a per-class table, in first-seen order."""
    return list(dict.fromkeys(column for row in per_class.values() for column in row))


def group_means(
    per_class: PerClass, groups: Mapping[str, Sequence[str]]
) -> dict[str, dict[str, float]]:
    """For each group, the mean of every column over its classes (NaNs left out; a column
    with no value in the group is NaN). KeyError naming the class for a class not in
    `per_class`."""
    out = {}
    for group, members in groups.items():
        unknown = [c for c in members if c not in per_class]
        if unknown:
            raise KeyError(f"group {group!r}: classes {unknown} are not in the per-class table")
        out[group] = {}
        for column in _columns(per_class):
            values = np.array([per_class[c].get(column, np.nan) for c in members], np.float64)
            values = values[~np.isnan(values)]
            out[group][column] = float(values.mean()) if values.size else float("nan")
    return out


def pearson(x: Sequence[float], y: Sequence[float]) -> float:
    """Pearson's ρ over the pairs where both are numbers; NaN with fewer than 2 pairs or a
    constant side."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    keep = ~(np.isnan(x) | np.isnan(y))
    if keep.sum() < 2:
        return float("nan")
    x, y = x[keep] - x[keep].mean(), y[keep] - y[keep].mean()
    norm = np.sqrt((x * x).sum() * (y * y).sum())
    return float((x * y).sum() / norm) if norm > 0 else float("nan")


def correlations(
    per_class: PerClass, properties: Sequence[str] = PROPERTIES
) -> dict[str, dict[str, float]]:
    """{property: {column: 100 ρ}}: Pearson's ρ × 100 between each property and every column
    (the properties included), over the classes of `per_class` (the foreground classes)."""
    columns = _columns(per_class)
    names = list(per_class)

    def column(key: str) -> list[float]:
        return [per_class[c].get(key, np.nan) for c in names]

    return {p: {c: 100.0 * pearson(column(p), column(c)) for c in columns} for p in properties}


def tertile_groups(per_class: PerClass, prop: str, names: Sequence[str]) -> dict[str, list[str]]:
    """The classes split into three groups by `prop` (lowest third first), in class order;
    classes without a value are left out. Ties keep class order: the classes are ranked by
    (value, position) and cut at ⌈n/3⌉ and ⌈2n/3⌉."""
    ranked = [c for c in per_class if not np.isnan(per_class[c][prop])]
    ranked = sorted(ranked, key=lambda c: (per_class[c][prop], list(per_class).index(c)))
    n = len(ranked)
    cuts = (0, -(-n // 3), -(-2 * n // 3), n)
    out = {}
    for name, lo, hi in zip(names, cuts[:-1], cuts[1:], strict=True):
        members = set(ranked[lo:hi])
        out[name] = [c for c in per_class if c in members]
    return out


def table(
    properties: PerClass,
    iou: Mapping[str, Mapping[str, float]],
    groups: Mapping[str, Sequence[str]],
    background: str = "background",
) -> dict:
    """The paper's Table 3 as data: per-class rows (properties, then one IoU column per entry
    of `iou`, in percent), the background row, the overall row (mIoU over background and the
    classes), group rows (`group_means`) and correlation rows (`correlations` over the
    foreground classes).

    properties: {class: {O, %S, %C, L}} of the foreground classes; iou: {column:
    {class or background: IoU in percent}}. Columns missing a class hold NaN there.
    """
    columns = [*PROPERTIES, *iou]
    classes = {
        name: {**props, **{col: float(iou[col].get(name, np.nan)) for col in iou}}
        for name, props in properties.items()
    }
    background_row = {col: float(iou[col].get(background, np.nan)) for col in iou}
    overall = {}
    for col in iou:
        values = np.array([background_row[col], *(classes[c][col] for c in classes)])
        values = values[~np.isnan(values)]
        overall[col] = float(values.mean()) if values.size else float("nan")
    return {
        "columns": columns,
        "classes": classes,
        "background": background_row,
        "overall": overall,
        "groups": group_means(classes, groups),
        "group_members": {g: list(m) for g, m in groups.items()},
        "correlations": correlations(classes),
    }


def _cell(value: float, integer: bool) -> str:
    if value is None or np.isnan(value):
        return "–"
    return f"{value:.0f}" if integer else f"{value:.1f}"


def _rows(tab: Mapping) -> list[tuple[str, str, dict]]:
    """(section, row name, {column: value}) of every row, in the table's order."""
    rows = [("class", name, values) for name, values in tab["classes"].items()]
    rows.append(("class", "background", tab["background"]))
    rows.append(("class", "overall", tab["overall"]))
    rows += [("group", name, values) for name, values in tab["groups"].items()]
    rows += [("correlation", f"ρ({p})", values) for p, values in tab["correlations"].items()]
    return rows


def to_markdown(tab: Mapping) -> str:
    """The table in Markdown: classes, background and overall, groups, then ρ × 100 rows."""
    columns = tab["columns"]
    lines = [
        "| | " + " | ".join(columns) + " |",
        "|---|" + "---:|" * len(columns),
    ]
    section = "class"
    for kind, name, values in _rows(tab):
        if kind != section:
            title = "**groups**" if kind == "group" else "**ρ × 100**"
            lines.append(f"| {title} |" + " |" * len(columns))
            section = kind
        cells = [_cell(values.get(c, np.nan), c == "O" and kind != "correlation") for c in columns]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def to_csv(tab: Mapping, prefix: Sequence[tuple[str, str]] = ()) -> str:
    """The table as CSV: `prefix` columns (name, value) first, then section, row and every
    column at full precision (empty for no value)."""
    columns = tab["columns"]
    head = [name for name, _ in prefix]
    lines = [",".join([*head, "section", "row", *columns])]
    for kind, name, values in _rows(tab):
        cells = []
        for c in columns:
            v = values.get(c, np.nan)
            cells.append("" if v is None or np.isnan(v) else f"{v:.6g}")
        lines.append(",".join([*(v for _, v in prefix), kind, f'"{name}"', *cells]))
    return "\n".join(lines) + "\n"
