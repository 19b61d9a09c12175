"""The classes file of a plain folder dataset: which stored mask value is which class, and which is ignored.

YAML (``classes.yaml``/``classes.yml``) or JSON (``classes.json``)::

    names: [background, road, car]     # the classes, in train-id order
    values: {0: background, 255: car}  # optional: stored value -> class (default: value i is names[i])
    ignore: 128                        # optional: stored value(s) meaning "unlabelled" (any value, 0 too;
                                       # a list, or null for none; default 255 unless 255 is a class value)
    colours: [[0, 0, 0], [128, 64, 128], [0, 0, 142]]   # optional: palette; also decodes RGB masks
    ignore_colour: [255, 255, 255]     # optional: the "unlabelled" colour of RGB masks

With ``values`` the ``names`` may be left out: the classes are then the values' classes in order of their
smallest stored value. A binary mask stored as 0/255 is ``values: {0: background, 255: foreground}``.

YAML is read without its implicit typing, so a class called ``null``, ``yes``, ``off`` or ``1`` stays the
string it is written as; numbers are converted where a field expects one, and refused with the field named
where they are not numbers.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from autodeeplab.data.labels import IGNORE_INDEX, Colour, LabelMap
from autodeeplab.data.problems import DataProblemError, problem
from autodeeplab.fileio import loads_json, loads_yaml

CLASSES_FILES = ("classes.yaml", "classes.yml", "classes.json")
MAX_CLASSES = IGNORE_INDEX  # train ids must stay below the ignore label
MIN_STORED_VALUE, MAX_STORED_VALUE = -32768, 65535  # 16-bit masks; a signed volume's -1 for "unlabelled"
STORED_RANGE = f"{MIN_STORED_VALUE}..{MAX_STORED_VALUE}"
FIELDS = ("names", "values", "ignore", "colours", "ignore_colour")
_INTEGER = re.compile(r"^[+-]?\d+$")
_NO_IGNORE = ("null", "none", "~", "")


@dataclass(frozen=True)
class ClassesSpec:
    """What a classes file says: the classes, which stored values are which class, the ignored values."""

    names: tuple[str, ...]
    values: dict[int, int]
    """Stored mask value -> class index (several values may name one class)."""
    ignore: tuple[int, ...]
    """Stored values meaning "unlabelled" (none of them a class value)."""
    colours: list[Colour] | None = None
    ignore_colour: Colour | None = None

    def label_map(self) -> LabelMap:
        """Stored values -> train ids (class index, or the package's ignore label)."""
        table = dict(self.values) | {value: IGNORE_INDEX for value in self.ignore}
        return LabelMap(table, self.expected())

    def expected(self) -> str:
        """The allowed stored values in words, for messages: ``0..2, or 255 (ignore)``."""
        if self.values == {i: i for i in range(len(self.names))}:
            classes = f"0..{len(self.names) - 1}" if len(self.names) > 1 else "0"
        else:
            shown = [f"{v} ({self.names[c]})" for v, c in sorted(self.values.items())[:8]]
            classes = ", ".join(shown) + (", ..." if len(self.values) > 8 else "")
        ignored = ", ".join(str(v) for v in self.ignore)
        return classes + (f", or {ignored} (ignore)" if ignored else "")

    def colour_table(self) -> dict[Colour, int] | None:
        """Colour -> stored value for RGB masks (each class's colour to its smallest stored value)."""
        if self.colours is None:
            return None
        first = {}
        for value, index in sorted(self.values.items(), reverse=True):
            first[index] = value
        table = {colour: first[index] for index, colour in enumerate(self.colours)}
        if self.ignore_colour is not None:
            table[self.ignore_colour] = self.ignore[0]
        return table


def find_classes_file(root: Path) -> Path | None:
    """The classes file of ``root`` (None when there is none); two of them are a problem, not a choice."""
    found = [root / name for name in CLASSES_FILES if (root / name).is_file()]
    if len(found) > 1:
        names = " and ".join(p.name for p in found)
        raise DataProblemError(problem(root, f"two classes files, {names}: keep one"))
    return found[0] if found else None


def read_classes_file(path: Path) -> ClassesSpec:
    """Read and validate a classes file; a :class:`DataProblemError` naming the file and field otherwise."""
    try:
        text = path.read_text(encoding="utf-8-sig")  # a BOM (Windows editors) is no data
        spec = loads_json(text) if path.suffix == ".json" else loads_yaml(text, plain=True)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, yaml.YAMLError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise DataProblemError(problem(path, f"unreadable classes file ({reason})")) from None
    return parse_classes(spec, path)


def parse_classes(spec: Any, path: Path) -> ClassesSpec:
    """Validate the content of a classes file (YAML read as plain strings, or JSON)."""

    def bad(field: str, what: str) -> DataProblemError:
        return DataProblemError(problem(path, f"field '{field}': {what}"))

    if not isinstance(spec, dict):
        raise DataProblemError(problem(path, "expected a mapping with 'names' or 'values' (see the docs)"))
    unknown = sorted(set(spec) - set(FIELDS))
    if unknown:
        raise bad(str(unknown[0]), f"unknown field (known: {', '.join(FIELDS)})")
    names = _names(spec.get("names"), bad) if "names" in spec else None
    if "values" in spec:
        names, values = _values(spec["values"], names, bad)
    elif names is None:
        raise DataProblemError(problem(path, "needs 'names' (the classes) or 'values' (stored value: class)"))
    else:
        values = {i: i for i in range(len(names))}
    if len(names) > MAX_CLASSES:
        raise bad("names", f"at most {MAX_CLASSES} classes are supported, got {len(names)}")
    ignore = _ignore(spec, values, names, bad)
    colours = spec.get("colours")
    if colours is not None:
        if not isinstance(colours, list) or len(colours) != len(names):
            raise bad("colours", f"must list one [R, G, B] per class ({len(names)})")
        colours = [_colour(c, lambda what: bad("colours", what)) for c in colours]
        if len(set(colours)) != len(colours):
            raise bad("colours", "class colours must be distinct")
    ignore_colour = spec.get("ignore_colour")
    if ignore_colour is not None:
        ignore_colour = _colour(ignore_colour, lambda what: bad("ignore_colour", what))
        if not ignore:
            raise bad("ignore_colour", "needs an 'ignore' value for the pixels of that colour")
    return ClassesSpec(tuple(names), values, ignore, colours, ignore_colour)


def _names(raw: Any, bad) -> list[str]:
    if not isinstance(raw, list) or not raw:
        raise bad("names", "must be a non-empty list of class names")
    for index, name in enumerate(raw):
        if not isinstance(name, str):
            # Only JSON gets here (YAML is read as strings): null, true, 3 are not names.
            shown = json.dumps(name)
            raise bad(f"names[{index}]", f'{shown} is not a class name; write it as a string: "{shown}"')
        if not name.strip():
            raise bad(f"names[{index}]", "a class name cannot be empty")
    if len(set(raw)) != len(raw):
        twice = next(n for n in raw if raw.count(n) > 1)
        raise bad("names", f"class names must be unique ({twice!r} is listed twice)")
    return list(raw)


def _values(raw: Any, names: list[str] | None, bad) -> tuple[list[str], dict[int, int]]:
    if not isinstance(raw, dict) or not raw:
        raise bad("values", "must map stored mask values to class names, e.g. {0: background, 255: object}")
    pairs = []
    for key, name in raw.items():
        value = _integer(key, f"values[{key}]", bad)
        if not MIN_STORED_VALUE <= value <= MAX_STORED_VALUE:
            raise bad(f"values[{key}]", f"stored values are {STORED_RANGE}, got {value}")
        if not isinstance(name, str) or not name.strip():
            raise bad(f"values[{key}]", f"must be a class name, got {json.dumps(name)}")
        pairs.append((value, name))
    pairs.sort()
    if names is None:
        names = list(dict.fromkeys(name for _, name in pairs))
    unknown = [name for _, name in pairs if name not in names]
    if unknown:
        raise bad("values", f"{unknown[0]!r} is not one of the names ({', '.join(names)})")
    unused = [name for name in names if name not in {n for _, n in pairs}]
    if unused:
        raise bad("values", f"class {unused[0]!r} has no stored value; give it one or drop it from names")
    return names, {value: names.index(name) for value, name in pairs}


def _ignore(spec: dict, values: dict[int, int], names: list[str], bad) -> tuple[int, ...]:
    if "ignore" not in spec:
        return () if IGNORE_INDEX in values else (IGNORE_INDEX,)
    raw = spec["ignore"]
    if raw is None or (isinstance(raw, str) and raw.strip().lower() in _NO_IGNORE):
        return ()
    items = raw if isinstance(raw, list) else [raw]
    ignore = []
    for item in items:
        value = _integer(item, "ignore", bad)
        if not MIN_STORED_VALUE <= value <= MAX_STORED_VALUE:
            raise bad("ignore", f"stored values are {STORED_RANGE}, got {value}")
        if value in values:
            owner = names[values[value]]
            hint = "" if "values" in spec else "; say which stored value is which class with 'values:'"
            raise bad("ignore", f"{value} is also the stored value of class {owner!r}{hint}")
        ignore.append(value)
    return tuple(dict.fromkeys(ignore))


def _integer(raw: Any, field: str, bad) -> int:
    if isinstance(raw, int) and not isinstance(raw, bool):
        return raw
    if isinstance(raw, str) and _INTEGER.match(raw.strip()):
        return int(raw)
    raise bad(field, f"expected an integer, got {json.dumps(raw)}")


def _colour(value: Any, bad) -> Colour:
    if not (isinstance(value, list | tuple) and len(value) == 3):
        raise bad(f"expected [R, G, B] integers, got {value!r}")
    try:
        rgb = [_integer(v, "", lambda field, what: ValueError()) for v in value]
    except ValueError:
        raise bad(f"expected [R, G, B] integers, got {value!r}") from None
    if not all(0 <= v <= 255 for v in rgb):
        raise bad(f"colour values must be within 0..255, got {rgb!r}")
    return (rgb[0], rgb[1], rgb[2])
