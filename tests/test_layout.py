"""The package's rooms: imports between sub-packages flow one way (README, "How the code maps to the paper").

Read from the source with ``ast``, so a new import against the flow fails here rather than in a review.
"""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

import autodeeplab

PACKAGE = Path(autodeeplab.__file__).parent

MODELS = {"ops", "space", "fast", "nets"}
FORBIDDEN: dict[str, set[str]] = {
    "ops": MODELS - {"ops"} | {"search", "train", "infer", "runs", "data", "viz", "pipeline"},
    "space": {"fast", "nets", "search", "train", "infer", "runs", "data", "viz", "pipeline"},
    "fast": {"nets", "search", "train", "infer", "runs", "data", "viz", "pipeline"},
    "nets": {"fast", "search", "train", "infer", "data", "viz", "pipeline"},
    "data": MODELS | {"search", "train", "infer", "runs", "viz", "pipeline"},
    "runs": MODELS | {"search", "train", "infer", "data", "viz", "pipeline"},
    "config": MODELS | {"search", "train", "infer", "runs", "data", "viz", "pipeline"},
    "viz": {"fast", "nets", "search", "train", "infer", "data", "pipeline"},
    "search": {"train", "pipeline"},
    "train": {"search", "pipeline"},
    "infer": {"search", "train", "pipeline", "fast"},
}
"""For each room, the rooms it must not import. Nobody but ``__main__`` imports ``cli``."""


def import_edges() -> dict[str, set[str]]:
    """``{room: rooms it imports}`` over every module of the package (top-level modules are rooms too)."""
    edges: dict[str, set[str]] = defaultdict(set)
    for path in PACKAGE.rglob("*.py"):
        rel = path.relative_to(PACKAGE)
        room = rel.parts[0] if len(rel.parts) > 1 else rel.stem
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("autodeeplab."):
                target = node.module.split(".")[1]
                if target != room:
                    edges[room].add(target)
    return edges


def test_imports_flow_one_way():
    edges = import_edges()
    wrong = {room: sorted(edges[room] & banned) for room, banned in FORBIDDEN.items() if edges[room] & banned}
    assert not wrong, wrong
    assert [room for room, targets in edges.items() if "cli" in targets] == ["__main__"]


def test_the_rooms_exist_and_the_check_sees_imports():
    """Guards the test above against passing vacuously (a renamed room, an import form it misses)."""
    edges = import_edges()
    assert {"space", "fast", "nets", "search", "train", "infer", "runs", "viz", "cli"} <= set(edges)
    assert "space" in edges["fast"] and "ops" in edges["space"] and "space" in edges["search"]
