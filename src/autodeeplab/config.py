"""Typed settings: dataclasses with the paper's values as defaults, YAML files, overrides and presets.

Each phase declares its own dataclass (``SearchConfig`` in ``search.py``, ``TrainConfig`` in ``train.py``);
nested dataclasses are allowed (use ``field(default_factory=...)``). Every field needs a default, and the
defaults are the paper's values. Supported field types: ``int``, ``float``, ``str``, ``bool``, ``Path``,
``tuple[X, ...]``, ``tuple[X, Y]``, ``list[X]``, ``dict[str, X]``, ``Optional[X]`` / ``X | None``,
``Literal[...]`` and nested dataclasses.

Resolution order, later wins::

    dataclass defaults (the paper) < preset < YAML file < overrides "a.b=value"

Usage::

    register_presets(SearchConfig, {"paper": {}, "cpu": {"epochs": 2, "data.crop": [64, 64]}})
    cfg = load_config(SearchConfig, preset="cpu", yaml_path="my.yaml", overrides=["lr=0.01"])
    dump_config_yaml(cfg, run_dir / "config.yaml", extra={"autodeeplab_version": __version__, "seed": 0})
    cfg2 = load_config(SearchConfig, yaml_path=run_dir / "config.yaml")  # == cfg (resume)

Presets and YAML files may use nested mappings (``data: {crop: [64, 64]}``) or dotted keys
(``data.crop``). Override values are parsed as YAML (``lr=1e-3``, ``crop=[64,64]``, ``x=null``); a value for
a ``str`` field is kept as typed (``name=123`` is the string ``"123"``). A ``float`` field also accepts
strings such as ``1e-3``, which PyYAML would otherwise read as text.

Everything is strict: an unknown key raises :class:`~autodeeplab.errors.ConfigError` naming the source and
the key and suggesting the closest valid one (``config.yaml: unknown key 'serch.lr' (did you mean
'search.lr'?)``); a value of the wrong type names the key and the expected type.

A ``config.yaml`` written by :func:`dump_config_yaml` holds the resolved settings plus a reserved
``run_info`` section (package version, seed, ...) that loading skips; read it with :func:`read_run_info`.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import re
import types
import typing
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, TypeVar, Union

import yaml

from .errors import ConfigError
from .fileio import atomic_write_text

T = TypeVar("T")

RUN_INFO_KEY = "run_info"
"""Reserved top-level key of a written ``config.yaml``: run metadata, not settings."""

_PRESETS: dict[type, dict[str, dict[str, Any]]] = {}
# A float written as 1e-3 is a string to PyYAML (YAML 1.1 wants a dot); accept such strings for floats.
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


# ----------------------------------------------------------------------------------------------------------
# Public API
# ----------------------------------------------------------------------------------------------------------


def config_to_dict(cfg: Any) -> dict[str, Any]:
    """A config dataclass as plain YAML/JSON types (nested dicts; tuples become lists, paths strings)."""
    if not dataclasses.is_dataclass(cfg) or isinstance(cfg, type):
        raise TypeError(f"expected a config dataclass instance, got {type(cfg).__name__}")
    return {f.name: _plain(getattr(cfg, f.name)) for f in dataclasses.fields(cfg) if f.init}


def _plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return config_to_dict(value)
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, Path):
        return str(value)
    return value


def config_from_dict(cls: type[T], data: Mapping[str, Any], source: str = "config", _prefix: str = "") -> T:
    """Build ``cls`` from a nested mapping; missing keys keep their defaults, unknown keys are errors."""
    if not isinstance(data, Mapping):
        raise ConfigError(f"{source}: expected a mapping of settings, got {type(data).__name__}")
    fields = _fields(cls)
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        dotted = f"{_prefix}{key}"
        if key not in fields:
            candidates = [f"{_prefix}{k}" for k in config_keys(cls, include_sections=True)]
            full = _first_leaf(dotted, value)
            raise _unknown_key(candidates, full, key, _prefix, sorted(fields), source)
        tp = fields[key][1]
        if _is_config_class(tp) and isinstance(value, Mapping):
            kwargs[key] = config_from_dict(tp, value, source, f"{dotted}.")
        else:
            kwargs[key] = _coerce_named(value, tp, dotted, source)
    missing = [
        name
        for name, (f, _) in fields.items()
        if name not in kwargs
        and f.default is dataclasses.MISSING
        and f.default_factory is dataclasses.MISSING  # type: ignore[misc]
    ]
    if missing:
        raise ConfigError(f"{source}: missing key {_prefix}{missing[0]!r}")
    try:
        return cls(**kwargs)
    except (ValueError, TypeError) as exc:  # a dataclass's own __post_init__ checks
        raise ConfigError(f"{source}: {exc}") from None


def register_presets(cls: type, presets: Mapping[str, Mapping[str, Any]]) -> None:
    """Register named presets for ``cls``: each a mapping of (dotted or nested) overrides of the defaults.

    Presets are checked against ``cls`` now, so a typo in a preset fails at import, not in a user's run.
    """
    for name, overrides in presets.items():
        list(_flatten(overrides, cls, f"preset {name!r}"))
    _PRESETS.setdefault(cls, {}).update({name: dict(overrides) for name, overrides in presets.items()})


def preset_names(cls: type) -> list[str]:
    """The presets registered for ``cls``, in registration order."""
    return list(_PRESETS.get(cls, {}))


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such config file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read config ({exc})") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or "syntax error"
        raise ConfigError(f"{path}: not valid YAML ({problem}{where})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of settings at the top, got {type(data).__name__}")
    return data


def _parse_override(cls: type, item: str) -> dict[str, Any]:
    key, sep, raw = item.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ConfigError(f"override {item!r}: expected KEY=VALUE, e.g. lr=0.01 or data.crop=[64,64]")
    try:
        value = yaml.safe_load(raw) if raw.strip() else raw
    except yaml.YAMLError:
        value = raw
    tp = _leaf_type(cls, key)
    if tp is not None and not _is_config_class(tp) and not isinstance(value, str) and value is not None:
        # A str field keeps the text as typed: name=123 means "123", not the number 123.
        try:
            _coerce(value, tp)
        except _Mismatch:
            try:
                _coerce(raw, tp)
                value = raw
            except _Mismatch:
                pass
    return {key: value}


def load_config(
    cls: type[T],
    preset: str | None = None,
    yaml_path: str | Path | None = None,
    overrides: Sequence[str] = (),
) -> T:
    """Resolve a config: ``cls`` defaults < ``preset`` < YAML file < ``overrides`` (``"a.b=value"``)."""
    data = config_to_dict(cls())
    layers: list[tuple[str, Mapping[str, Any]]] = []
    if preset is not None:
        table = _PRESETS.get(cls, {})
        if preset not in table:
            close = difflib.get_close_matches(preset, list(table), n=1)
            hint = f"did you mean {close[0]!r}? " if close else ""
            available = ", ".join(table) or "none"
            raise ConfigError(f"preset {preset!r}: unknown preset ({hint}available: {available})")
        layers.append((f"preset {preset!r}", table[preset]))
    if yaml_path is not None:
        content = _read_yaml(Path(yaml_path))
        content.pop(RUN_INFO_KEY, None)
        layers.append((str(yaml_path), content))
    for item in overrides:
        layers.append((f"override {item!r}", _parse_override(cls, item)))
    for source, layer in layers:
        for path, value in _flatten(layer, cls, source):
            _set_path(data, path, _plain(value))
    return config_from_dict(cls, data, source="resolved config")


def dump_config_yaml(cfg: Any, path: str | Path, extra: Mapping[str, Any] | None = None) -> None:
    """Write the resolved ``cfg`` as YAML atomically, ``extra`` (version, seed, ...) under ``run_info``."""
    body: dict[str, Any] = {}
    if extra:
        body[RUN_INFO_KEY] = _plain(dict(extra))
    body.update(config_to_dict(cfg))
    header = (
        f"# Resolved {type(cfg).__name__} of this run; load it again with the config option.\n"
        f"# '{RUN_INFO_KEY}' records how the run was made and is ignored when loading.\n"
    )
    text = yaml.safe_dump(body, sort_keys=False, default_flow_style=None, allow_unicode=True)
    atomic_write_text(path, header + text)


def read_run_info(path: str | Path) -> dict[str, Any]:
    """The ``run_info`` section of a ``config.yaml`` from :func:`dump_config_yaml` (``{}`` if absent)."""
    info = _read_yaml(Path(path)).get(RUN_INFO_KEY) or {}
    if not isinstance(info, dict):
        raise ConfigError(f"{path}: {RUN_INFO_KEY}: expected a mapping, got {type(info).__name__}")
    return info


# ----------------------------------------------------------------------------------------------------------
# Resuming with changed settings
# ----------------------------------------------------------------------------------------------------------

RESUMED_WITH_KEY = "resumed_with"
"""``run_info`` entry of a ``config.yaml``: the settings changed on each resume (a list of records)."""
