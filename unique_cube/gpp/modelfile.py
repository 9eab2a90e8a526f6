"""Model files checked before a learner reads them.

LightGBM's text reader trusts its input: a file cut short or edited can make it read past the
end of the text or follow a child index out of a tree, and the process dies of a segmentation
fault. :func:`lightgbm_features` therefore checks a text model as LightGBM reads it — the
header, ``tree_sizes`` against the tree blocks, every tree's arrays (lengths, numbers, feature
and child indices, a tree and not a cycle), ``end of trees`` and the tail — and accepts only
what :func:`~unique_cube.gpp.learners.save_model` writes (numerical splits, no linear trees,
one output). :func:`linear_model` checks the ridge learner's JSON. Both return the feature
names the file stores, and raise :class:`ValueError` saying what is wrong and where.
"""

from __future__ import annotations

import json
import math
import re

import numpy as np

__all__ = ["lightgbm_features", "linear_model"]

_INTS = re.compile(r"-?\d+(?: -?\d+)*")
_NUMBER = r"(?:-?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?|-?inf|nan)"
_NUMBERS = re.compile(rf"{_NUMBER}(?: {_NUMBER})*")
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_PARAMETER = re.compile(r"\[[A-Za-z0-9_]+: [^\n\]]*\]")
#: Tree arrays: those with one value per internal node, those with one per leaf.
_PER_NODE = (
    "split_feature",
    "split_gain",
    "threshold",
    "decision_type",
    "left_child",
    "right_child",
    "internal_value",
    "internal_weight",
    "internal_count",
)
_PER_LEAF = ("leaf_value", "leaf_weight", "leaf_count")
_TREE_KEYS = {"num_leaves", "num_cat", "is_linear", "shrinkage", *_PER_NODE, *_PER_LEAF}
#: Decision types of numerical splits: default left or right, missing none, zero or NaN.
_NUMERICAL = {0, 2, 4, 6, 8, 10}
_LAST_LINE = "pandas_categorical:null"


def lightgbm_features(text: str) -> list[str]:
    """The feature names of a LightGBM text model, once it is known to be whole and sound."""
    # LightGBM counts tree_sizes in bytes and stops at a NUL: ASCII keeps characters and bytes
    # one, and a NUL would end the text LightGBM sees before the one checked here.
    if "\0" in text:
        raise ValueError(f"a NUL byte at byte {text.index(chr(0))}")
    if not text.isascii():
        where = next(i for i, c in enumerate(text) if not c.isascii())
        raise ValueError(f"a character that is not ASCII at character {where}")
    first_tree = text.find("\nTree=")
    if not text.startswith("tree\n") or first_tree < 0:
        raise ValueError("no 'tree' header followed by trees")
    header = _header(text[: first_tree + 1])
    n_features = header["max_feature_idx"] + 1
    names = header["feature_names"]
    start = first_tree + 1
    sizes = header["tree_sizes"]
    for i, size in enumerate(sizes):
        end = start + size
        if end > len(text):
            raise ValueError(
                f"tree {i} of {len(sizes)} ends at byte {end} by tree_sizes, past the end of "
                f"the file ({len(text)} bytes): the file is cut short"
            )
        try:
            _tree(text[start:end], i, n_features)
        except ValueError as err:
            raise ValueError(f"tree {i} of {len(sizes)} (at byte {start}): {err}") from None
        start = end
    if not text.startswith("end of trees\n", start):
        raise ValueError(
            f"no 'end of trees' where tree_sizes end (byte {start}): the sizes do not match "
            "the tree blocks"
        )
    _tail(text[start + len("end of trees\n") :])
    return names


def _header(text: str) -> dict:
    values: dict[str, str] = {}
    for number, line in enumerate(text.splitlines()[1:], 2):
        if not line:
            continue
        key, sep, value = line.partition("=")
        if key in values or (sep and "=" in value and key != "feature_names"):
            raise ValueError(f"line {number} of the header is malformed: {line[:80]!r}")
        values[key] = value
    out: dict = {}
    for key, wanted in (("num_class", 1), ("num_tree_per_iteration", 1), ("label_index", 0)):
        if values.get(key) != str(wanted):
            raise ValueError(
                f"the header's {key} is {values.get(key)!r}, not {wanted} (a model of one output)"
            )
    if not re.fullmatch(r"v\d+", values.get("version", "")):
        raise ValueError(f"the header has no version=v<N> ({values.get('version')!r})")
    if not re.fullmatch(r"\d{1,6}", values.get("max_feature_idx", "")):
        raise ValueError(f"max_feature_idx {values.get('max_feature_idx')!r} is not a count")
    out["max_feature_idx"] = int(values["max_feature_idx"])
    if not re.fullmatch(r"[a-z_0-9]+(?: [a-z_]+:[-+.e0-9]+)*", values.get("objective", "")):
        raise ValueError(f"the header's objective {values.get('objective')!r} is malformed")
    names = values.get("feature_names", "").split(" ")
    bad = [n for n in names if not _NAME.fullmatch(n)]
    if bad:
        raise ValueError(f"feature_names holds {bad[0]!r}, not a feature name")
    if len(names) != out["max_feature_idx"] + 1:
        raise ValueError(
            f"feature_names has {len(names)} names, max_feature_idx says "
            f"{out['max_feature_idx'] + 1}"
        )
    out["feature_names"] = names
    infos = values.get("feature_infos", "").split(" ")
    if len(infos) != out["max_feature_idx"] + 1:
        raise ValueError(
            f"feature_infos has {len(infos)} entries, not {out['max_feature_idx'] + 1}"
        )
    if "monotone_constraints" in values:
        raise ValueError("monotone_constraints, which unique-cube models never have")
    sizes = values.get("tree_sizes", "")
    if not re.fullmatch(r"\d{1,9}(?: \d{1,9})*", sizes):
        raise ValueError(f"tree_sizes is missing or malformed ({sizes[:40]!r})")
    out["tree_sizes"] = [int(s) for s in sizes.split(" ")]
    return out


def _tree(block: str, index: int, n_features: int) -> None:
    """One ``Tree=i`` block: ``key=value`` lines, then the blank line LightGBM stops at."""
    head, _, body = block.partition("\n")
    if head != f"Tree={index}":
        raise ValueError(f"the block starts with {head[:40]!r}, not 'Tree={index}'")
    lines, sep, rest = body.partition("\n\n")
    if not sep or rest.strip("\n"):
        raise ValueError(
            "the block does not end with a blank line (tree_sizes do not match the trees)"
        )
    values: dict[str, str] = {}
    for line in lines.split("\n"):
        key, eq, value = line.partition("=")
        if not eq or key not in _TREE_KEYS or key in values:
            raise ValueError(f"unexpected line {line[:60]!r}")
        values[key] = value
    leaves = _int(values, "num_leaves")
    if not 1 <= leaves <= 131072:
        raise ValueError(f"num_leaves is {leaves}")
    if _int(values, "num_cat") != 0:
        raise ValueError("categorical splits, which unique-cube models never have")
    if _int(values, "is_linear", default=0) != 0:
        raise ValueError("linear leaves, which unique-cube models never have")
    if not math.isfinite(_floats(values, "shrinkage", 1, default="1")[0]):
        raise ValueError("shrinkage is not finite")
    if not np.isfinite(_floats(values, "leaf_value", leaves)).all():
        raise ValueError("leaf_value holds a value that is not finite")
    if values.get("leaf_weight"):
        _floats(values, "leaf_weight", leaves)
    if values.get("leaf_count"):
        _ints(values, "leaf_count", leaves)
    if leaves == 1:
        extra = [k for k in _PER_NODE if values.get(k)]
        if extra:
            raise ValueError(f"a tree of one leaf with {extra[0]}")
        return
    nodes = leaves - 1
    for key in ("split_gain", "internal_value", "internal_weight"):
        if values.get(key):
            _floats(values, key, nodes)
    if values.get("internal_count"):
        _ints(values, "internal_count", nodes)
    if not np.isfinite(_floats(values, "threshold", nodes)).all():
        raise ValueError("threshold holds a value that is not finite")
    features = _ints(values, "split_feature", nodes)
    outside = [f for f in features if not 0 <= f < n_features]
    if outside:
        raise ValueError(f"split_feature {outside[0]} is not one of {n_features} features")
    kinds = set(_ints(values, "decision_type", nodes, default=" ".join(["0"] * nodes)))
    if not kinds <= _NUMERICAL:
        raise ValueError(f"decision_type {sorted(kinds - _NUMERICAL)[0]} is not a numerical split")
    _check_children(_ints(values, "left_child", nodes), _ints(values, "right_child", nodes))


def _check_children(left: list[int], right: list[int]) -> None:
    """Children must make one tree: every node reached once from the root, every leaf once."""
    nodes = len(left)
    seen_nodes, seen_leaves = [False] * nodes, [False] * (nodes + 1)
    seen_nodes[0] = True
    todo = [0]
    while todo:
        node = todo.pop()
        for child in (left[node], right[node]):
            if child >= 0:
                if child >= nodes or seen_nodes[child]:
                    raise ValueError(f"node {node}'s child {child} is not a new node of {nodes}")
                seen_nodes[child] = True
                todo.append(child)
            else:
                leaf = ~child
                if leaf > nodes or seen_leaves[leaf]:
                    raise ValueError(
                        f"node {node}'s child {child} is not a new leaf of {nodes + 1}"
                    )
                seen_leaves[leaf] = True
    if not all(seen_nodes) or not all(seen_leaves):
        raise ValueError("nodes or leaves that the root does not reach")


def _tail(text: str) -> None:
    """What follows ``end of trees``: importances, parameters, LightGBM's last line."""
    importances, sep, rest = text.partition("\nparameters:\n")
    if not sep:
        raise ValueError("no 'parameters:' after the trees: the file is cut short")
    head, *lines = importances.strip("\n").split("\n")
    if head != "feature_importances:":
        raise ValueError(f"{head[:40]!r} where 'feature_importances:' should follow the trees")
    for line in lines:
        name, eq, count = line.partition("=")
        if not (eq and _NAME.fullmatch(name) and count.isdigit()):
            raise ValueError(f"feature_importances line {line[:60]!r} is malformed")
    parameters, sep, rest = rest.partition("\nend of parameters\n")
    if not sep:
        raise ValueError("no 'end of parameters': the file is cut short")
    for line in parameters.strip("\n").split("\n"):
        if not _PARAMETER.fullmatch(line):
            raise ValueError(f"parameter line {line[:60]!r} is malformed")
    if rest.strip("\n") != _LAST_LINE:
        raise ValueError(
            f"the file does not end with {_LAST_LINE!r}: it is cut short or has text added"
        )


def _ints(values: dict[str, str], key: str, n: int, default: str | None = None) -> list[int]:
    value = values.get(key, default)
    if value is None or not _INTS.fullmatch(value):
        raise ValueError(f"{key} is missing or not integers")
    out = [int(v) for v in value.split(" ")]
    if len(out) != n:
        raise ValueError(f"{key} has {len(out)} values, not {n}")
    return out


def _int(values: dict[str, str], key: str, default: int | None = None) -> int:
    value = values.get(key, None if default is None else str(default))
    if value is None or not re.fullmatch(r"-?\d{1,9}", value):
        raise ValueError(f"{key} is missing or not an integer")
    return int(value)


def _floats(values: dict[str, str], key: str, n: int, default: str | None = None) -> np.ndarray:
    value = values.get(key, default)
    if value is None or not _NUMBERS.fullmatch(value):
        raise ValueError(f"{key} is missing or not numbers")
    out = np.array(value.split(" "), dtype=np.float64)
    if len(out) != n:
        raise ValueError(f"{key} has {len(out)} values, not {n}")
    return out


def linear_model(text: str) -> tuple[list[str], np.ndarray, np.ndarray, np.ndarray]:
    """Feature names, coefficients (intercept first), means and scales of a ridge model file."""
    try:
        data = json.loads(text)
        names = data["features"]
        coef, mean, scale = (
            np.asarray(data[k], dtype=np.float64) for k in ("coef", "mean", "scale")
        )
    except KeyError as err:
        raise ValueError(
            f"no {err} (a file written before models carried their feature names?)"
        ) from None
    except (ValueError, TypeError) as err:
        raise ValueError(str(err)) from None
    if not (isinstance(names, list) and all(isinstance(n, str) for n in names)):
        raise ValueError("features is not a list of names")
    n = len(names)
    if coef.shape != (n + 1,) or mean.shape != (n,) or scale.shape != (n,):
        raise ValueError(
            f"coef, mean and scale have shapes {coef.shape}, {mean.shape}, "
            f"{scale.shape}; {n} features need ({n + 1},), ({n},), ({n},)"
        )
    if not (np.isfinite(coef).all() and np.isfinite(mean).all() and np.isfinite(scale).all()):
        raise ValueError("a coefficient, mean or scale is not finite")
    if (scale == 0).any():
        raise ValueError("a scale of 0")
    return names, coef, mean, scale
