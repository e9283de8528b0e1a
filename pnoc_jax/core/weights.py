"""Network weights as files: `.npz` archives of `{collection: {module: ...}}` variables.

One format for every weight file the pipeline reads or writes: ImageNet backbones converted from
PyTorch (`pnoc_jax.models.convert`) and the final variables every training stage exports
(`<stage>/weights/<state>.npz`). Keys are flat "collection/module/.../leaf" paths; arrays are
read without pickle. Loading needs no optimizer and no model: the caller merges the arrays into
freshly initialised variables, which checks every shape.
"""

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from pnoc_jax.core import fileio
from pnoc_jax.core.errors import UserError

Variables = dict[str, Any]


def _flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, np.ndarray]:
    flat: dict[str, np.ndarray] = {}
    for key, value in tree.items():
        if "/" in key:
            raise ValueError(f"key {key!r} contains '/'")
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(_flatten(value, name + "/"))
        else:
            flat[name] = np.asarray(value)
    return flat


def save(tree: Mapping[str, Any], path: str) -> None:
    """Writes a nested dict of arrays as an .npz with flat "a/b/c" keys, atomically."""
    flat = _flatten(tree)
    fileio.write_npz(path, flat)


def load(path: str) -> Variables:
    """Reads an .npz written by `save` into a nested dict of numpy arrays (`~` expanded)."""
    path = fileio.expand(path)
    try:
        arrays = fileio.read_npz(path)
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: weights file missing") from None
    except (OSError, ValueError) as e:  # fileio.UnreadableNpz is a ValueError
        raise ValueError(f"{path}: not a readable weights file (.npz of arrays): {e}") from e
    tree: Variables = {}
    for key, value in arrays.items():
        parts = key.split("/")
        node = tree
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = value
    return tree


def count_parameters(tree: Mapping[str, Any]) -> int:
    return sum(v.size for v in _flatten(tree.get("params", {})).values())


def _replace_exact(dst: Any, src: Any, path: str) -> Any:
    """Copy of `src` cast to `dst`'s dtypes; key sets and shapes must agree exactly."""
    if isinstance(dst, Mapping) != isinstance(src, Mapping):
        raise ValueError(f"structure mismatch at {path!r}")
    if not isinstance(dst, Mapping):
        if tuple(np.shape(dst)) != tuple(np.shape(src)):
            raise ValueError(
                f"shape mismatch at {path!r}: model {tuple(np.shape(dst))}, "
                f"weights {tuple(np.shape(src))}"
            )
        return jnp.asarray(src, dtype=dst.dtype)
    for key in dst:
        if key not in src:
            raise KeyError(f"the weights lack '{path}/{key}'")
    for key in src:
        if key not in dst:
            raise KeyError(f"the model has no variable '{path}/{key}' (found in the weights)")
    return {key: _replace_exact(dst[key], src[key], f"{path}/{key}") for key in dst}


def _to_dict(tree: Any) -> Any:
    if isinstance(tree, Mapping):
        return {k: _to_dict(v) for k, v in tree.items()}
    return tree


def merge(
    variables: Mapping[str, Any], weights: Mapping[str, Any], prefix: Sequence[str] = ()
) -> Variables:
    """Overwrites the subtrees present in `weights` (e.g. `backbone`) in `variables`.

    `weights` is `{collection: {module: subtree}}`, e.g. from `load`. `prefix` locates the model
    inside `variables` when it is a submodule. Each replaced subtree must match the model
    exactly: a differing shape raises a ValueError naming the first such path, a missing or
    extra leaf a KeyError. Everything else (e.g. a new head) is kept. Returns new plain dicts.
    """
    out = _to_dict(variables)
    for col, modules in weights.items():
        if col not in out:
            raise KeyError(f"model variables have no collection {col!r}")
        node = out[col]
        for part in prefix:
            if part not in node:
                raise KeyError(f"model variables have no {col}/{'/'.join(prefix)}")
            node = node[part]
        for module, subtree in modules.items():
            path = "/".join((col, *prefix, module))
            if module not in node:
                raise KeyError(f"model variables have no {path!r}")
            node[module] = _replace_exact(node[module], subtree, path)
    return out


class WeightsError(UserError, ValueError):
    """A weights file that does not fit the network it is loaded into."""


def initializer(
    path: str, modules: Sequence[str] | None = None
) -> Callable[[Variables], Variables]:
    """A variables rewrite that loads the weights file `path` into fresh variables.

    `modules` selects top-level modules (e.g. `("backbone",)`: initialise a backbone from an
    ImageNet file or from another stage's trained network); None loads every module the file has.
    The file is read now, so a missing file fails before any compilation.
    """
    loaded = load(path)
    if modules is not None:
        missing = [m for m in modules if m not in loaded.get("params", {})]
        if missing:
            raise WeightsError(f"{path}: no {missing} module in the weights")
        loaded = {col: {m: tree[m] for m in modules if m in tree} for col, tree in loaded.items()}
    return lambda variables: merge(variables, loaded)


def variable_shapes(model: Any, input_shape: tuple[int, ...]) -> dict:
    """`jax.ShapeDtypeStruct`s of `model`'s inference variables, for inputs of `input_shape`
    (traced, nothing is compiled or run)."""
    shapes = jax.eval_shape(
        lambda: model.init(jax.random.key(0), jnp.zeros(input_shape), train=False)
    )
    return dict(shapes)


def _fresh_variables(model: Any, input_shape: tuple[int, ...]) -> dict:
    """Zero-filled host variables of `model` (shapes only; nothing is compiled)."""
    shapes = variable_shapes(model, input_shape)
    return jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), shapes)


def _checked(merged: Callable[[], dict], path: str, what: str) -> dict:
    """`merged()`, its KeyError / ValueError (another architecture) as a `WeightsError`."""
    try:
        return merged()
    except (KeyError, ValueError) as e:
        message = e.args[0] if isinstance(e, KeyError) and e.args else e
        raise WeightsError(f"{path}: not {what}: {message}") from None


def checked_initializer(
    path: str, model: Any, input_shape: tuple[int, ...], what: str, modules=("backbone",)
) -> Callable[[dict], dict]:
    """`initializer(path, modules)`, checked now against `model` (a linen module taking
    `(x, train=False)`): a file of another architecture is a `WeightsError` naming the file, the
    first differing variable and `what` it should hold, before anything is compiled or written."""
    init = initializer(path, modules)
    fresh = _fresh_variables(model, input_shape)
    _checked(lambda: init(fresh), path, what)
    return init


def load_checked(path: str, model: Any, input_shape: tuple[int, ...], what: str) -> dict:
    """A trained network's variables from the weights file `path`, checked against `model`
    (`WeightsError` naming the file for another architecture)."""
    fresh = _fresh_variables(model, input_shape)
    return _checked(lambda: merge(fresh, load(path)), path, what)
