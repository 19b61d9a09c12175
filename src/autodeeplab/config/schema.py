"""The schema side of :mod:`autodeeplab.config.settings`: the fields of a config dataclass, value coercion
with
messages that name the key and the expected type, unknown-key suggestions, and dotted-key flattening.

Private to the config modules (names start with ``_``); the public API is :mod:`autodeeplab.config.settings`.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import re
import sys
import types
import typing
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, Union

from autodeeplab.errors import ConfigError

# A float written as 1e-3 is a string to PyYAML (YAML 1.1 wants a dot); accept such strings for floats.
_LARGEST_FLOAT = sys.float_info.max
_FLOAT_TEXT = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$|^[+-]?(inf|nan)$", re.IGNORECASE)


class _Mismatch(Exception):
    """Internal: a value does not fit a type (turned into a ConfigError naming the key)."""


# ----------------------------------------------------------------------------------------------------------
# Schema helpers
# ----------------------------------------------------------------------------------------------------------


@functools.cache
def _fields(cls: type) -> dict[str, tuple[dataclasses.Field, Any]]:
    """``name -> (field, resolved type)`` of a config dataclass (string annotations resolved)."""
    if not (isinstance(cls, type) and dataclasses.is_dataclass(cls)):
        raise TypeError(f"{cls!r} is not a dataclass type")
    hints = typing.get_type_hints(cls)
    return {f.name: (f, hints[f.name]) for f in dataclasses.fields(cls) if f.init}


def _is_config_class(tp: Any) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def config_keys(cls: type, include_sections: bool = False) -> list[str]:
    """Every dotted key of ``cls`` (leaves; with ``include_sections`` also the nested dataclass keys)."""
    keys: list[str] = []
    for name, (_, tp) in _fields(cls).items():
        if _is_config_class(tp):
            if include_sections:
                keys.append(name)
            keys.extend(f"{name}.{sub}" for sub in config_keys(tp, include_sections))
        else:
            keys.append(name)
    return keys


def _type_name(tp: Any) -> str:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in args)
    if origin in (Union, types.UnionType):
        return " or ".join("null" if a is type(None) else _type_name(a) for a in args)
    if origin is tuple:
        if len(args) == 2 and args[1] is Ellipsis:
            return f"a list of {_type_name(args[0])}"
        return f"a list of {len(args)} values ({', '.join(_type_name(a) for a in args)})"
    if origin is list:
        return f"a list of {_type_name(args[0])}" if args else "a list"
    if origin is dict:
        return "a mapping"
    if _is_config_class(tp):
        return f"a mapping of {tp.__name__} settings"
    return getattr(tp, "__name__", str(tp))


def _coerce(value: Any, tp: Any) -> Any:
    """``value`` converted to ``tp`` (lists to tuples, ints to floats, ...) or :class:`_Mismatch`."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg)
            except _Mismatch:
                pass
        raise _Mismatch
    if origin is Literal:
        # Compare types too, so that True does not pass for 1 nor 1 for 1.0.
        for allowed in args:
            if value == allowed and type(value) is type(allowed):
                return value
        raise _Mismatch
    if origin in (tuple, list):
        if not isinstance(value, (list, tuple)):
            raise _Mismatch
        if origin is list:
            return [_coerce(v, args[0]) for v in value] if args else list(value)
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(v, args[0]) for v in value)
        if args and len(args) != len(value):
            raise _Mismatch
        return tuple(_coerce(v, a) for v, a in zip(value, args, strict=True)) if args else tuple(value)
    if origin is dict:
        if not isinstance(value, Mapping) or not all(isinstance(k, str) for k in value):
            raise _Mismatch
        value_type = args[1] if args else Any
        return {k: _coerce(v, value_type) for k, v in value.items()}
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise _Mismatch
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise _Mismatch
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            if isinstance(value, int) and abs(value) > _LARGEST_FLOAT:  # float() would overflow
                raise _Mismatch
            return float(value)
        if isinstance(value, str) and _FLOAT_TEXT.match(value.strip()):
            return float(value)
        raise _Mismatch
    if tp is str:
        if isinstance(value, str):
            return value
        raise _Mismatch
    if tp is Path:
        if isinstance(value, (str, Path)):
            return Path(value)
        raise _Mismatch
    if _is_config_class(tp):
        if isinstance(value, tp):
            return value
        raise _Mismatch  # mappings for nested sections are handled by the callers
    raise TypeError(f"config field type {tp!r} is not supported")


def _short_repr(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _coerce_named(value: Any, tp: Any, key: str, source: str) -> Any:
    try:
        return _coerce(value, tp)
    except _Mismatch:
        raise ConfigError(
            f"{source}: {key}: expected {_type_name(tp)}, got {_short_repr(value)} ({type(value).__name__})"
        ) from None


def _unknown_key(
    candidates: Sequence[str], full_key: str, part: str, section: str, siblings: Sequence[str], source: str
) -> ConfigError:
    """The error for ``full_key``, whose component ``part`` is not one of ``siblings`` (under ``section``).

    First the whole dotted key is matched (catches ``serch.lr`` -> ``search.lr``); the strict cutoff keeps a
    shared ``search.`` prefix from making any two keys of a section look alike. Then the wrong component
    alone is matched against its siblings.
    """
    close = difflib.get_close_matches(full_key, candidates, n=1, cutoff=0.85)
    if not close:
        close = [section + m for m in difflib.get_close_matches(part, siblings, n=1, cutoff=0.6)]
    hint = f"did you mean {close[0]!r}?" if close else "valid keys here: " + ", ".join(siblings)
    return ConfigError(f"{source}: unknown key {full_key!r} ({hint})")


def _first_leaf(key: str, value: Any) -> str:
    """``serch`` with ``{lr: 1}`` below it reads ``serch.lr`` in messages (the key as the user wrote it)."""
    while isinstance(value, Mapping) and value:
        sub, value = next(iter(value.items()))
        key = f"{key}.{sub}"
    return key


def _flatten(
    layer: Mapping[str, Any], root: type, source: str, cls: type | None = None, prefix: str = ""
) -> Iterator[tuple[tuple[str, ...], Any]]:
    """Yield ``(path, coerced value)`` for every setting in ``layer`` (nested and/or dotted keys)."""
    cls = root if cls is None else cls
    if not isinstance(layer, Mapping):
        raise ConfigError(f"{source}: expected a mapping of settings, got {type(layer).__name__}")
    for raw_key, value in layer.items():
        if not isinstance(raw_key, str) or not raw_key:
            raise ConfigError(f"{source}: keys must be non-empty strings, got {raw_key!r}")
        current, path = cls, []
        parts = raw_key.split(".")
        for i, part in enumerate(parts):
            fields = _fields(current)
            dotted = ".".join(filter(None, [prefix, *parts[: i + 1]]))
            if part not in fields:
                full = _first_leaf(".".join(filter(None, [prefix, *parts])), value)
                section = ".".join(filter(None, [prefix, *parts[:i]]))
                section = f"{section}." if section else ""
                raise _unknown_key(config_keys(root, True), full, part, section, sorted(fields), source)
            tp = fields[part][1]
            path.append(part)
            if i < len(parts) - 1:
                if not _is_config_class(tp):
                    full = ".".join(filter(None, [prefix, *parts]))
                    raise _unknown_key(config_keys(root, True), full, parts[i + 1], dotted, [], source)
                current = tp
        dotted = ".".join(filter(None, [prefix, *path]))
        if _is_config_class(tp) and isinstance(value, Mapping):
            for sub_path, sub_value in _flatten(value, root, source, tp, dotted):
                yield (*path, *sub_path), sub_value
        elif _is_config_class(tp):
            raise ConfigError(f"{source}: {dotted}: expected {_type_name(tp)}, got {_short_repr(value)}")
        else:
            yield tuple(path), _coerce_named(value, tp, dotted, source)


def _set_path(data: dict[str, Any], path: tuple[str, ...], value: Any) -> None:
    for part in path[:-1]:
        data = data[part]
    data[path[-1]] = value


def _leaf_type(cls: type, dotted: str) -> Any:
    tp: Any = cls
    for part in dotted.split("."):
        if not _is_config_class(tp) or part not in _fields(tp):
            return None
        tp = _fields(tp)[part][1]
    return tp
