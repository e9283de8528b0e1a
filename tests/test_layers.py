"""The package's import layers, read from the source: one way only, and no cycles.

Each module of pnoc_jax belongs to a layer by its subpackage. A module may import its own
subpackage (without cycles) and any layer below its own, never a layer above and never another
subpackage of its own layer: so `core` imports no other pnoc_jax package and no stage family
imports another. Imports inside functions count too.
"""

import ast
import pathlib

import pytest

PACKAGE = pathlib.Path(__file__).resolve().parents[1] / "pnoc_jax"

LAYERS: tuple[tuple[str, ...], ...] = (
    ("core", "config_lib"),
    ("data", "models", "postprocess"),
    ("evaluation", "inference", "visualize"),
    ("cam", "affinity", "saliency", "segmentation", "analysis"),  # stage families
    ("experiments",),  # drivers of sub-pipelines, given the runner's run_stage
    ("pipeline",),
    ("main", "benchmark", "cpu_benchmark", "predict", "plan"),
)


def _modules() -> dict[str, pathlib.Path]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


MODULES = _modules()


def _resolve(name: str) -> str | None:
    """The pnoc_jax module a dotted import name refers to (a module, or its package)."""
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def _imports(module: str) -> set[str]:
    path = MODULES[module]
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parent, base] if base else parent)
            names = [f"{base}.{alias.name}" for alias in node.names]
        for name in names:
            if name.split(".")[0] == "pnoc_jax" and (target := _resolve(name)) != "pnoc_jax":
                found.add(target)
    found.discard(module)
    return found


def _group(module: str) -> str:
    """The subpackage (or top-level module) a module belongs to: "core", "cam", "pipeline"."""
    return module.split(".")[1] if "." in module else ""


def _layer(module: str) -> int:
    for rank, groups in enumerate(LAYERS):
        if _group(module) in groups:
            return rank
    raise AssertionError(f"{module} belongs to no layer; add its subpackage to LAYERS")


GRAPH = {module: _imports(module) for module in MODULES}


@pytest.mark.parametrize("module", sorted(m for m in MODULES if m != "pnoc_jax"))
def test_imports_go_down_the_layers(module):
    rank = _layer(module)
    for target in sorted(GRAPH[module]):
        if target == "pnoc_jax" or _group(target) == _group(module):
            continue
        assert _layer(target) < rank, (
            f"{module} (layer {rank}, {_group(module)}) imports {target} "
            f"(layer {_layer(target)}, {_group(target)})"
        )


def test_no_import_cycles():
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done

    def visit(module: str, path: list[str]) -> None:
        state[module] = 1
        for target in sorted(GRAPH[module]):
            if state.get(target) == 1:
                cycle = [*path[path.index(target) :], target]
                raise AssertionError("import cycle: " + " -> ".join(cycle))
            if target not in state:
                visit(target, [*path, target])
        state[module] = 2

    for module in sorted(GRAPH):
        if module not in state:
            visit(module, [module])


def test_the_checker_sees_imports():
    """The reader finds top-level, from-, relative and function-level imports."""
    assert "pnoc_jax.core.artifacts" in GRAPH["pnoc_jax.cam.infer"]
    assert "pnoc_jax.cam.train" in GRAPH["pnoc_jax.pipeline"]
    assert GRAPH["pnoc_jax.config_lib"] == set()
    assert all(_group(t) == "core" for t in GRAPH["pnoc_jax.core.loop"])
