"""Typed settings: dataclasses with the paper's values as defaults, YAML files, overrides and presets.

Each phase declares its own dataclass (``SearchConfig`` in ``search/config.py``, ``TrainConfig`` in
``train/config.py``);
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
Values of the right type that cannot work are refused by each settings class's ``validate(where)``
(:mod:`autodeeplab.config.checks`), which a top-level class runs when it is built, so :func:`load_config`
returns only valid settings.

A ``config.yaml`` written by :func:`dump_config_yaml` holds the resolved settings plus a reserved
``run_info`` section (package version, seed, ...) that loading skips; read it with :func:`read_run_info`.
"""

from __future__ import annotations

import dataclasses
import difflib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import yaml

from autodeeplab.config.schema import (
    _coerce,
    _coerce_named,
    _fields,
    _first_leaf,
    _flatten,
    _is_config_class,
    _leaf_type,
    _Mismatch,
    _set_path,
    _unknown_key,
    config_keys,
)
from autodeeplab.errors import ConfigError
from autodeeplab.fileio import atomic_write_text, loads_yaml

T = TypeVar("T")

RUN_INFO_KEY = "run_info"
"""Reserved top-level key of a written ``config.yaml``: run metadata, not settings."""

_PRESETS: dict[type, dict[str, dict[str, Any]]] = {}
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


def read_settings_yaml(path: Path) -> dict[str, Any]:
    """The mapping at the top of a settings YAML file; any failure (missing, unreadable, not YAML, not a
    mapping) is a one-line :class:`ConfigError` naming the file."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such config file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read config ({exc})") from None
    try:
        data = loads_yaml(text)
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
        raise ConfigError(f"override {item!r}: expected KEY=VALUE, e.g. lr=0.01 or data.flip=false")
    try:
        value = loads_yaml(raw) if raw.strip() else raw
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
        content = read_settings_yaml(Path(yaml_path))
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
    info = read_settings_yaml(Path(path)).get(RUN_INFO_KEY) or {}
    if not isinstance(info, dict):
        raise ConfigError(f"{path}: {RUN_INFO_KEY}: expected a mapping, got {type(info).__name__}")
    return info


# ----------------------------------------------------------------------------------------------------------
# Resuming with changed settings
# ----------------------------------------------------------------------------------------------------------

RESUMED_WITH_KEY = "resumed_with"
"""``run_info`` entry of a ``config.yaml``: the settings changed on each resume (a list of records)."""
