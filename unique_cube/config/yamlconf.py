"""Typed YAML → frozen dataclasses, with errors that name the file, the key and what was expected.

Every configuration object of unique_cube (catalogs, later pipelines) is a frozen dataclass;
:func:`build` fills one from a parsed YAML mapping and checks every key against the field types:
an unknown key, a missing key or a value of the wrong type is a :class:`ConfigError` such as::

    catalogs/demo.yaml: sources.hls-l30.bands.red.scale: expected a number, got 'x' (str) (line 31)

The line is that of the key in the file (mappings read by :func:`read_yaml` remember where each
of their keys is); an unknown key also names the closest known one.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import difflib
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar, Union

import yaml

from unique_cube.errors import ConfigError

__all__ = ["build", "read_yaml"]


T = TypeVar("T")


class _Mapping(dict):
    """A YAML mapping that remembers the line (1-based) of each of its keys."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.lines: dict[Any, int] = {}


class _Loader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that keeps key lines, refuses duplicate keys, and leaves a timestamp
    that is no date (``2023-13-01``) a string, for :func:`build` to name with its key."""


def _construct_mapping(loader: _Loader, node: yaml.MappingNode) -> Any:
    data = _Mapping()
    yield data
    own = {id(k) for k, _ in node.value if k.tag != "tag:yaml.org,2002:merge"}
    loader.flatten_mapping(node)  # `<<` merge keys: merged pairs first, the file's own override
    seen: dict[Any, int] = {}
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=True)
        try:
            hash(key)
        except TypeError:
            raise yaml.constructor.ConstructorError(
                "while constructing a mapping", node.start_mark,
                "found an unhashable key", key_node.start_mark,
            ) from None  # fmt: skip
        line = key_node.start_mark.line + 1
        if id(key_node) in own:
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    "while constructing a mapping", node.start_mark,
                    f"found the key {key!r} twice (lines {seen[key]} and {line})",
                    key_node.start_mark,
                )  # fmt: skip
            seen[key] = line
        data[key] = loader.construct_object(value_node, deep=True)
        data.lines[key] = line


def _construct_timestamp(loader: _Loader, node: yaml.ScalarNode) -> Any:
    try:
        return yaml.SafeLoader.construct_yaml_timestamp(loader, node)
    except ValueError:  # month 13, February 30: a string that build() reports with its key
        return loader.construct_scalar(node)


_Loader.add_constructor("tag:yaml.org,2002:map", _construct_mapping)
_Loader.add_constructor("tag:yaml.org,2002:timestamp", _construct_timestamp)


def read_yaml(path: str | Path, *, located: bool = False) -> dict[str, Any]:
    """Parse a YAML file that must hold a mapping at its top level.

    Mappings in the result remember the line of each key, for :func:`build`'s messages. A
    duplicate key is an error (plain YAML loaders keep the last one silently). ``located``:
    the file describes a dataclass whose ``path`` is set from the file's location, so a
    ``path`` key in it is an error."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise ConfigError(
            f"{path}: not a UTF-8 text file (byte {err.start}: {err.reason}); expected a YAML file"
        ) from err
    except OSError as err:
        raise ConfigError(f"{path}: cannot read the file ({err.strerror or err})") from err
    try:
        data = yaml.load(text, Loader=_Loader)  # a SafeLoader: no Python objects
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(err, "problem", None) or str(err)
        raise ConfigError(f"{path}: malformed YAML{where}: {problem}") from err
    if not isinstance(data, Mapping):
        raise ConfigError(f"{path}: expected a mapping at the top level, got {_kind(data)}")
    if located and "path" in data:
        raise ConfigError(f"{path}: path: unknown key; it is set from the file's location")
    return data


def build(cls: type[T], data: Any, *, file: str | Path, key: str = "") -> T:
    """Build the frozen dataclass ``cls`` from ``data``, validating every field.

    Parameters
    ----------
    cls
        A dataclass whose fields have type hints built from str, int, float, bool,
        ``X | None``, ``tuple[X, ...]``, ``Mapping[str, X]`` and other dataclasses.
    data
        The parsed YAML value.
    file, key
        Where ``data`` comes from, for error messages.
    """
    return _convert(cls, data, _Where(str(file), key))


@dataclasses.dataclass(frozen=True)
class _Where:
    file: str
    key: str
    line: int | None = None

    def child(self, name: str | int, line: int | None = None) -> _Where:
        """The key ``name`` below this one, on ``line`` (default: this key's line)."""
        line = line or self.line
        if isinstance(name, int):
            return _Where(self.file, f"{self.key}[{name}]", line)
        return _Where(self.file, f"{self.key}.{name}" if self.key else str(name), line)

    def error(self, message: str) -> ConfigError:
        at = f" (line {self.line})" if self.line else ""
        return ConfigError(f"{self.file}: {self.key or '(top level)'}: {message}{at}")


def _lines(value: Any) -> dict[Any, int]:
    return getattr(value, "lines", {})


def _kind(value: Any) -> str:
    if value is None:
        return "nothing (null)"
    return f"{value!r} ({type(value).__name__})" if not isinstance(value, Mapping) else "a mapping"


def _describe(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if tp is str:
        return "a string"
    if tp is bool:
        return "true or false"
    if tp is int:
        return "an integer"
    if tp is float:
        return "a number"
    if tp is dt.date:
        return "a date (YYYY-MM-DD)"
    if dataclasses.is_dataclass(tp):
        return f"a mapping with keys {', '.join(f.name for f in dataclasses.fields(tp))}"
    if origin is tuple:
        return f"a list of {_describe(typing.get_args(tp)[0]).removeprefix('a ')}s"
    if origin in (Mapping, dict):
        return "a mapping"
    if origin in (Union, types.UnionType):
        return " or ".join(_describe(a) for a in typing.get_args(tp) if a is not type(None))
    return str(tp)


def _convert(tp: Any, value: Any, where: _Where) -> Any:
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        non_none = [a for a in args if a is not type(None)]
        errors = []
        for arg in non_none:
            try:
                return _convert(arg, value, where)
            except ConfigError as err:
                errors.append(err)
        if len(non_none) == 1:
            raise errors[0]
        raise where.error(f"expected {_describe(tp)}, got {_kind(value)}")
    if typing.get_origin(tp) is typing.Literal:
        allowed = typing.get_args(tp)
        if value not in allowed:
            raise where.error(f"expected one of {', '.join(map(str, allowed))}, got {_kind(value)}")
        return value
    if dataclasses.is_dataclass(tp):
        return _convert_dataclass(tp, value, where)
    if origin is tuple:
        (item_type, _ellipsis) = typing.get_args(tp)
        if not isinstance(value, list | tuple):
            raise where.error(f"expected {_describe(tp)}, got {_kind(value)}")
        return tuple(_convert(item_type, v, where.child(i)) for i, v in enumerate(value))
    if origin in (Mapping, dict):
        key_type, value_type = typing.get_args(tp)
        if not isinstance(value, Mapping):
            raise where.error(f"expected {_describe(tp)}, got {_kind(value)}")
        lines = _lines(value)
        return types.MappingProxyType(
            {
                _convert(key_type, k, where.child(str(k), lines.get(k))): _convert(
                    value_type, v, where.child(str(k), lines.get(k))
                )
                for k, v in value.items()
            }
        )
    if tp is bool:
        if not isinstance(value, bool):
            raise where.error(f"expected true or false, got {_kind(value)}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise where.error(f"expected an integer, got {_kind(value)}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise where.error(f"expected a number, got {_kind(value)}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise where.error(f"expected a string, got {_kind(value)}")
        return value
    if tp is dt.date:
        if isinstance(value, dt.date) and not isinstance(value, dt.datetime):
            return value
        try:
            return dt.date.fromisoformat(str(value))
        except ValueError as err:
            why = f": {err}" if "out of range" in str(err) or "must be in" in str(err) else ""
            raise where.error(f"expected a date (YYYY-MM-DD), got {_kind(value)}{why}") from None
    if tp is Any:
        return value
    raise TypeError(f"unsupported field type {tp!r} at {where.key}")  # a programming error


def _convert_dataclass(cls: Any, value: Any, where: _Where) -> Any:
    if not isinstance(value, Mapping):
        raise where.error(f"expected {_describe(cls)}, got {_kind(value)}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    lines = _lines(value)
    unknown = [k for k in value if k not in fields]
    if unknown:
        key = unknown[0]
        close = difflib.get_close_matches(str(key), list(fields), n=1)
        hint = f"; did you mean '{close[0]}'?" if close else ""
        raise where.child(str(key), lines.get(key)).error(
            f"unknown key; expected one of {', '.join(fields)}{hint}"
        )
    kwargs = {}
    for name, field in fields.items():
        if name in value:
            kwargs[name] = _convert(hints[name], value[name], where.child(name, lines.get(name)))
        elif field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING:
            raise where.error(f"missing key '{name}' ({_describe(hints[name])})")
    obj = cls(**kwargs)
    check = getattr(obj, "_check", None)
    if check is not None:
        problem = check()
        if isinstance(problem, tuple):  # (field, message): the problem is in that field
            name, problem = problem
            raise where.child(name, lines.get(name)).error(problem)
        if problem:
            raise where.error(problem)
    return obj
