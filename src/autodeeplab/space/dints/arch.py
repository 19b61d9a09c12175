"""The one representation of a found DiNTS architecture: :class:`DintsArch` (``dints_arch.json`` on disk).

Format (version 1)::

    {"version": 1, "kind": "dints", "op_set": "dints-3d", "depths": 4,
     "blocks": [[[0, 0, "conv_3x3x3"], [0, 1, "skip_connect"]],
                [[0, 0, "conv_1x3x3"], [1, 1, "conv_3x3x3"], [1, 2, "conv_3x3x1"]], ...]}

``blocks[b]`` lists block ``b``'s active edges as ``[from depth, to depth, op]`` (``|from - to| <= 1``; depth
``d`` has resolution ``1/2^(d+1)`` of the input), in the topology's edge order. Valid when every block has an
edge and each block reads exactly the depths the block before wrote: every active node is then fed from the
stem and reaches the head (the stem feeds every depth of block 0, the head takes every depth of the last).
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
from autodeeplab.space.dints.topology import Topology

FORMAT_VERSION = 1
KIND = "dints"
AUTODEEPLAB_OPS = tuple(name for name in PRIMITIVES if name != "none")
"""Auto-DeepLab's primitives as a DiNTS op set (``none`` left out: a DiNTS edge is switched off by the
topology, not by an op)."""
OP_SETS: dict[str, tuple[str, ...]] = {
    # DiNTS's own cells (paper §3.1; pseudo-3D pairs: a 2D kernel, then a 1D kernel along the third axis).
    "dints-3d": ("skip_connect", "conv_3x3x3", "conv_3x3x1", "conv_3x1x3", "conv_1x3x3"),
    "dints-2d": ("skip_connect", "conv_3x3"),
    "autodeeplab-3d": AUTODEEPLAB_OPS,
    "autodeeplab-2d": AUTODEEPLAB_OPS,
}
"""Op names of each op set (``{kind}-{dims}d``), in the order of the op logits' last axis."""
OP_SET_KINDS = ("dints", "autodeeplab")


def op_set_dims(op_set: str) -> int:
    """The spatial dimensions of an op set: ``dints-3d`` → 3."""
    return int(op_set.rsplit("-", 1)[1][0])


Edge = tuple[int, int, str]


@dataclass(frozen=True)
class DintsArch:
    """A decoded DiNTS topology: for each block its active edges and their ops. Construct through
    :meth:`from_dict` / :meth:`load` / :meth:`from_chain` to get validation."""

    op_set: str
    depths: int
    blocks: tuple[tuple[Edge, ...], ...]
    FILE_NAME: ClassVar[str] = "dints_arch.json"
    """The file a run directory holds it in."""

    @property
    def num_blocks(self) -> int:
        return len(self.blocks)

    def node_sets(self) -> list[tuple[set[int], set[int]]]:
        """``(depths read, depths written)`` of each block."""
        return [({e[0] for e in block}, {e[1] for e in block}) for block in self.blocks]

    def to_dict(self) -> dict[str, Any]:
        return {
            "version": FORMAT_VERSION,
            "kind": KIND,
            "op_set": self.op_set,
            "depths": self.depths,
            "blocks": [[list(edge) for edge in block] for block in self.blocks],
        }

    def to_json(self) -> str:
        """One line for the header, one line per block (diff-friendly)."""
        head = {k: v for k, v in self.to_dict().items() if k != "blocks"}
        lines = ",\n            ".join(json.dumps([list(e) for e in block]) for block in self.blocks)
        return json.dumps(head)[:-1] + f',\n "blocks": [{lines}]}}\n'

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write ``dints_arch.json`` atomically."""
        atomic_write_text(Path(path), self.to_json())

    def short(self) -> str:
        """One line, e.g. ``dints 4x12 | 0>0 0>1 | 0>0 1>1 1>2 | ...`` (ops left out)."""
        blocks = " | ".join(" ".join(f"{a}>{b}" for a, b, _ in block) for block in self.blocks)
        return f"dints {self.depths}x{self.num_blocks} | {blocks}"

    @classmethod
    def from_chain(cls, chain: list[int], op_choice: Any, topology: Topology, op_set: str) -> DintsArch:
        """From decoded patterns (one per block, :func:`best_chain`) and op indices ``[B, E]`` per edge."""
        ops = OP_SETS[op_set]
        blocks = []
        for b, pattern in enumerate(chain):
            on = topology.pattern_bits[pattern]
            blocks.append([[*topology.edges[i], ops[int(op_choice[b][i])]] for i in range(len(on)) if on[i]])
        return cls.from_dict(
            {
                "version": FORMAT_VERSION,
                "kind": KIND,
                "op_set": op_set,
                "depths": topology.depths,
                "blocks": blocks,
            }
        )

    @classmethod
    def from_dict(cls, data: Any, source: str = "dints_arch") -> DintsArch:
        """Validate a parsed ``dints_arch.json`` object; errors name ``source`` and the field."""
        if not isinstance(data, dict):
            raise GenotypeError(f"{source}: expected a JSON object, got {type(data).__name__}")
        keys = ("version", "kind", "op_set", "depths", "blocks")
        unknown = sorted(set(data) - set(keys))
        if unknown:
            raise GenotypeError(f"{source}: unknown key {unknown[0]!r} (allowed: {', '.join(keys)})")
        for key in keys:
            if key not in data:
                raise GenotypeError(f"{source}: missing key {key!r}")
        if type(data["version"]) is not int or data["version"] != FORMAT_VERSION:
            raise GenotypeError(f"{source}: version: expected {FORMAT_VERSION}, got {data['version']!r}")
        if data["kind"] != KIND:
            raise GenotypeError(f"{source}: kind: expected {KIND!r}, got {data['kind']!r}")
        op_set = data["op_set"]
        if op_set not in OP_SETS:
            raise GenotypeError(f"{source}: op_set: unknown {op_set!r} (choose from {', '.join(OP_SETS)})")
        depths = data["depths"]
        if type(depths) is not int or not 1 <= depths <= 6:
            raise GenotypeError(f"{source}: depths: expected an integer in 1..6, got {depths!r}")
        blocks = _validate_blocks(data["blocks"], source, depths, OP_SETS[op_set])
        return cls(op_set, depths, blocks)

    @classmethod
    def from_json(cls, text: str, source: str = "dints_arch") -> DintsArch:
        return cls.from_dict(parse_json_document(text, source, GenotypeError), source)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> DintsArch:
        path = Path(path)
        return cls.from_json(read_document(path, "architecture", GenotypeError), str(path))


def is_dints_document(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` holds a DiNTS document (``dints_arch.json`` or a DiNTS ``arch_params.json``: its
    ``kind``); False for anything unreadable, which the reader of the file then reports."""
    try:
        data = parse_json_document(Path(path).read_text(encoding="utf-8"), str(path), GenotypeError)
    except (OSError, UnicodeDecodeError, GenotypeError):
        return False
    return isinstance(data, dict) and data.get("kind") == KIND


def _validate_blocks(
    blocks: Any, source: str, depths: int, ops: tuple[str, ...]
) -> tuple[tuple[Edge, ...], ...]:
    if not isinstance(blocks, list) or not blocks:
        raise GenotypeError(f"{source}: blocks: expected a non-empty list of blocks")
    order = {edge: i for i, edge in enumerate(Topology(depths).edges)}
    out: list[tuple[Edge, ...]] = []
    written: set[int] | None = None  # None before block 0: the stem feeds every depth
    for b, block in enumerate(blocks):
        where = f"{source}: blocks[{b}]"
        if not isinstance(block, list) or not block:
            raise GenotypeError(f"{where}: expected a non-empty list of [from, to, op] edges")
        edges: list[Edge] = []
        for j, edge in enumerate(block):
            at = f"{where}[{j}]"
            if not isinstance(edge, list) or len(edge) != 3:
                raise GenotypeError(f"{at}: expected [from depth, to depth, op], got {edge!r}")
            a, z, op = edge
            if (type(a), type(z)) != (int, int) or (a, z) not in order:
                raise GenotypeError(
                    f"{at}: no edge from depth {a!r} to {z!r} (depths 0..{depths - 1}, at most one apart)"
                )
            if op not in ops:
                raise GenotypeError(f"{at}: unknown op {op!r} (choose from {', '.join(ops)})")
            if any((a, z) == e[:2] for e in edges):
                raise GenotypeError(f"{at}: edge {a}>{z} appears twice in the block")
            edges.append((a, z, op))
        edges.sort(key=lambda e: order[e[:2]])
        reads = {e[0] for e in edges}
        if written is not None and reads != written:
            fed, unfed = sorted(written - reads), sorted(reads - written)
            what = f"reads depths {unfed} that block {b - 1} does not write" if unfed else ""
            what += ("; " if what and fed else "") + (
                f"leaves depths {fed} of block {b - 1} unused" if fed else ""
            )
            raise GenotypeError(f"{where}: {what} (each block must read exactly what the one before writes)")
        written = {e[1] for e in edges}
        out.append(tuple(edges))
    return tuple(out)
