"""The one representation of a found architecture: :class:`Genotype` (``genotype.json`` on disk).

Format (version 1)::

    {"version": 1,
     "network_path": [0, 0, 0, 1, 2, 1, 2, 2, 3, 3, 2, 1],
     "cell": [[["atr_conv_5x5", 0], ["sep_conv_3x3", 1]], ...]}

``network_path[l]`` is the level (0..levels-1, output stride 4·2^level) of layer ``l+1``; the first
entry is 0 or 1 (the stem is at level 0) and consecutive entries differ by at most one.
``cell[i]`` holds block ``i``'s two ``(primitive, input)`` pairs; input 0 is h^{l-2}, 1 is h^{l-1},
``2+k`` is the output of block ``k`` (so block ``i`` sees inputs ``0 .. i+1``).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from autodeeplab.errors import GenotypeError
from autodeeplab.fileio import atomic_write_text, parse_json_document, read_document
from autodeeplab.ops.primitives import PRIMITIVES

FORMAT_VERSION = 1
DEFAULT_NUM_LEVELS = 4
MAX_NUM_LEVELS = 8
"""Output strides up to 4·2^7 = 512: the deepest a genotype file may name."""

Pair = tuple[str, int]
Block = tuple[Pair, Pair]


@dataclass(frozen=True)
class Genotype:
    """A decoded Auto-DeepLab architecture: the network-level path and the cell.

    Construct through :meth:`from_dict` / :meth:`load` / :func:`resolve_genotype` to get validation;
    the constructor itself trusts its arguments.
    """

    network_path: tuple[int, ...]
    cell: tuple[Block, ...]
    num_levels: int = DEFAULT_NUM_LEVELS
    """The levels of the space it was found in (output strides 4·2^l): what its path is checked against.
    Written to JSON only when it is not the paper's 4, so that the files of 4-level spaces stay as they
    were."""
    FILE_NAME: ClassVar[str] = "genotype.json"
    """The file a run directory holds it in."""

    @property
    def num_layers(self) -> int:
        return len(self.network_path)

    @property
    def num_blocks(self) -> int:
        return len(self.cell)

    def to_dict(self) -> dict[str, Any]:
        levels = {} if self.num_levels == DEFAULT_NUM_LEVELS else {"num_levels": self.num_levels}
        return {
            "version": FORMAT_VERSION,
            "network_path": list(self.network_path),
            **levels,
            "cell": [[[op, idx] for op, idx in block] for block in self.cell],
        }

    def to_json(self) -> str:
        """Compact JSON: one line for the path, one line per block (diff-friendly)."""
        blocks = ",\n          ".join(json.dumps([[op, i] for op, i in b]) for b in self.cell)
        levels = "" if self.num_levels == DEFAULT_NUM_LEVELS else f' "num_levels": {self.num_levels},\n'
        return (
            f'{{"version": {FORMAT_VERSION},\n "network_path": {json.dumps(list(self.network_path))},\n'
            f'{levels} "cell": [{blocks}]}}\n'
        )

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write ``genotype.json`` atomically (never leaves a half-written file)."""
        atomic_write_text(Path(path), self.to_json())

    def short(self) -> str:
        """One-line text form, e.g. ``path 0-0-0-1-2 | cell atr5(0)+sep3(1) ...``."""
        abbrev = {
            "max_pool_3x3": "max3",
            "avg_pool_3x3": "avg3",
            "skip_connect": "skip",
            "sep_conv_3x3": "sep3",
            "sep_conv_5x5": "sep5",
            "atr_conv_3x3": "atr3",
            "atr_conv_5x5": "atr5",
        }
        cell = " ".join("+".join(f"{abbrev[op]}({i})" for op, i in block) for block in self.cell)
        return f"path {'-'.join(map(str, self.network_path))} | cell {cell}"

    @classmethod
    def from_dict(cls, data: Any, source: str = "genotype", num_levels: int | None = None) -> Genotype:
        """Validate a parsed ``genotype.json`` object; errors name ``source`` and the field.

        The levels are the object's ``num_levels`` (default 4); ``num_levels`` given: the space's, which an
        object's own must equal."""
        if not isinstance(data, dict):
            raise GenotypeError(f"{source}: expected a JSON object, got {type(data).__name__}")
        unknown = sorted(set(data) - {"version", "network_path", "num_levels", "cell"})
        if unknown:
            raise GenotypeError(
                f"{source}: unknown key {unknown[0]!r} (allowed: version, network_path, num_levels, cell)"
            )
        for key in ("version", "network_path", "cell"):
            if key not in data:
                raise GenotypeError(f"{source}: missing key {key!r}")
        if type(data["version"]) is not int or data["version"] != FORMAT_VERSION:  # true == 1 in Python
            raise GenotypeError(f"{source}: version: expected {FORMAT_VERSION}, got {data['version']!r}")
        levels = data.get("num_levels", DEFAULT_NUM_LEVELS if num_levels is None else num_levels)
        if not _is_int(levels) or not 1 <= levels <= MAX_NUM_LEVELS:
            raise GenotypeError(
                f"{source}: num_levels: expected an integer in 1..{MAX_NUM_LEVELS}, got {levels!r}"
            )
        if num_levels is not None and levels != num_levels:
            raise GenotypeError(f"{source}: num_levels: {levels}, but the search space has {num_levels}")
        # levels taken by default: the file may be of a deeper space, written before genotypes said so
        deeper = "num_levels" not in data and num_levels is None
        path = _validate_path(data["network_path"], source, levels, deeper)
        cell = _validate_cell(data["cell"], source)
        return cls(network_path=path, cell=cell, num_levels=levels)

    @classmethod
    def from_json(cls, text: str, source: str = "genotype") -> Genotype:
        return cls.from_dict(parse_json_document(text, source, GenotypeError), source)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Genotype:
        path = Path(path)
        return cls.from_json(read_document(path, "genotype", GenotypeError), str(path))


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _validate_path(path: Any, source: str, num_levels: int, deeper_hint: bool = False) -> tuple[int, ...]:
    if not isinstance(path, list) or not path:
        raise GenotypeError(f"{source}: network_path: expected a non-empty list of levels")
    hint = '; a genotype of a space of more levels says so: add "num_levels": N' if deeper_hint else ""
    for layer, level in enumerate(path):
        where = f"{source}: network_path[{layer}]"
        if not _is_int(level) or not 0 <= level < num_levels:
            raise GenotypeError(
                f"{where}: level must be an integer in 0..{num_levels - 1}, got {level!r}{hint}"
            )
        previous = 0 if layer == 0 else path[layer - 1]  # the stem sits at level 0
        if abs(level - previous) > 1:
            what = "the stem's level 0" if layer == 0 else f"level {previous} of the layer before"
            raise GenotypeError(f"{where}: level {level} jumps more than one level from {what}")
    return tuple(path)


def _validate_cell(cell: Any, source: str) -> tuple[Block, ...]:
    if not isinstance(cell, list) or not cell:
        raise GenotypeError(f"{source}: cell: expected a non-empty list of blocks")
    blocks: list[Block] = []
    for i, block in enumerate(cell):
        if not isinstance(block, list) or len(block) != 2:
            raise GenotypeError(f"{source}: cell[{i}]: expected two [primitive, input] pairs")
        pairs: list[Pair] = []
        for j, pair in enumerate(block):
            where = f"{source}: cell[{i}][{j}]"
            if not isinstance(pair, list) or len(pair) != 2:
                raise GenotypeError(f"{where}: expected a [primitive, input] pair, got {pair!r}")
            op, idx = pair
            if op == "none":
                raise GenotypeError(f"{where}: primitive 'none' cannot be part of a found cell")
            if op not in PRIMITIVES:
                raise GenotypeError(
                    f"{where}: unknown primitive {op!r} (choose from {', '.join(PRIMITIVES[1:])})"
                )
            if not _is_int(idx) or not 0 <= idx < i + 2:
                raise GenotypeError(
                    f"{where}: input {idx!r} is not visible to block {i} (valid inputs: 0..{i + 1}; "
                    "0 = h^(l-2), 1 = h^(l-1), 2+k = block k)"
                )
            pairs.append((op, idx))
        blocks.append((pairs[0], pairs[1]))
    return tuple(blocks)


PAPER = Genotype(
    network_path=(0, 0, 0, 1, 2, 1, 2, 2, 3, 3, 2, 1),
    cell=(
        (("atr_conv_5x5", 0), ("sep_conv_3x3", 1)),
        (("sep_conv_3x3", 0), ("atr_conv_3x3", 1)),
        (("sep_conv_3x3", 3), ("sep_conv_3x3", 0)),
        (("sep_conv_5x5", 4), ("sep_conv_5x5", 2)),
        (("sep_conv_5x5", 3), ("atr_conv_5x5", 5)),
    ),
)
"""The architecture found in the paper (Fig. 3; Google's released ``hnasnet``)."""

BUILTIN: dict[str, Genotype] = {"paper": PAPER}


def resolve_genotype(spec: str | os.PathLike[str]) -> Genotype:
    """A built-in name (``paper``), a ``genotype.json`` file, or a run directory holding one."""
    if isinstance(spec, str) and spec in BUILTIN:
        return BUILTIN[spec]
    path = Path(spec)
    if path.is_dir():
        path = path / "genotype.json"
    if not path.exists():
        raise GenotypeError(
            f"{spec}: not a built-in genotype ({', '.join(BUILTIN)}), a genotype.json file, "
            "or a run directory containing one"
        )
    return Genotype.load(path)
