"""The package's rooms: imports between sub-packages flow one way (README, "How the code maps to the paper").

Read from the source with ``ast``, so a new import against the flow fails here rather than in a review.
"""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

import autodeeplab

PACKAGE = Path(autodeeplab.__file__).parent

ROOMS = {p.stem for p in PACKAGE.glob("*.py")} - {"__init__"} | {
    p.name for p in PACKAGE.iterdir() if p.is_dir() and (p / "__init__.py").exists()
}
"""Every sub-package and top-level module of the package."""
MODELS = {"ops", "space", "fast", "nets"}
RUN_MACHINERY = {"runs", "optim"}
"""What a loop needs to run and resume; the models know nothing of it (``model.pt`` is a
:mod:`autodeeplab.checkpoint_io` file, which knows nothing of runs)."""
LOOPS = {"search", "train", "infer", "pipeline"}
FORBIDDEN: dict[str, set[str]] = {
    "ops": MODELS - {"ops"} | RUN_MACHINERY | LOOPS | {"data", "viz", "checkpoint_io"},
    "space": {"fast", "nets", "data", "viz", "checkpoint_io"} | RUN_MACHINERY | LOOPS,
    "fast": {"nets", "data", "viz", "checkpoint_io"} | RUN_MACHINERY | LOOPS,
    "nets": {"fast", "data", "viz"} | RUN_MACHINERY | LOOPS,
    "data": MODELS | RUN_MACHINERY | LOOPS | {"viz", "checkpoint_io"},
    "runs": MODELS | LOOPS | {"optim", "data", "viz"},
    "config": MODELS | RUN_MACHINERY | LOOPS | {"data", "viz", "checkpoint_io"},
    "viz": {"fast", "nets", "optim", "data"} | LOOPS,
    "search": {"train", "pipeline"},
    "train": {"search", "pipeline"},
    "infer": {"search", "train", "pipeline", "fast"},
    "errors": ROOMS - {"errors"},
    "fileio": ROOMS - {"fileio", "errors"},
    "checkpoint_io": ROOMS - {"checkpoint_io", "fileio", "errors"},
    "optim": ROOMS - {"optim"},
    "outputs": ROOMS - {"outputs", "errors"},
}
"""For each room, the rooms it must not import. Nobody but ``__main__`` imports ``cli``."""


def imported_rooms(tree: ast.AST, parts: tuple[str, ...]) -> set[str]:
    """The rooms that the module at ``parts`` (its path inside the package, ``("nets", "cell.py")``)
    imports: ``from autodeeplab.x import ...``, ``from autodeeplab import x``, ``import autodeeplab.x``
    and relative imports."""
    rooms: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            modules = [alias.name.split(".") for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: from the module's own package, ``level - 1`` packages up
                base = ["autodeeplab", *parts[:-1]][: len(parts) - node.level + 1]
                module = [*base, *(node.module.split(".") if node.module else [])]
            else:
                module = node.module.split(".")
            # ``from autodeeplab import x`` names the room in the alias (``__version__`` is no room)
            modules = [[*module, alias.name] for alias in node.names] if len(module) == 1 else [module]
        else:
            continue
        rooms |= {m[1] for m in modules if m[0] == "autodeeplab" and len(m) > 1 and m[1] in ROOMS}
    return rooms


def import_edges() -> dict[str, set[str]]:
    """``{room: rooms it imports}`` over every module of the package (top-level modules are rooms too)."""
    edges: dict[str, set[str]] = defaultdict(set)
    for path in PACKAGE.rglob("*.py"):
        rel = path.relative_to(PACKAGE)
        room = rel.parts[0] if len(rel.parts) > 1 else rel.stem
        edges[room] |= imported_rooms(ast.parse(path.read_text(encoding="utf-8")), rel.parts) - {room}
    return edges


def test_imports_flow_one_way():
    edges = import_edges()
    wrong = {room: sorted(edges[room] & banned) for room, banned in FORBIDDEN.items() if edges[room] & banned}
    assert not wrong, wrong
    assert [room for room, targets in edges.items() if "cli" in targets] == ["__main__"]


def test_the_rooms_exist_and_the_check_sees_imports():
    """Guards the test above against passing vacuously (a renamed room, an import form it misses)."""
    edges = import_edges()
    assert set(FORBIDDEN) <= ROOMS and set().union(*FORBIDDEN.values()) <= ROOMS
    assert {"space", "fast", "nets", "search", "train", "infer", "runs", "viz", "cli"} <= set(edges)
    assert "space" in edges["fast"] and "ops" in edges["space"] and "space" in edges["search"]
    forms = {
        "from autodeeplab.runs.rundir import RunDir": {"runs"},
        "import autodeeplab.runs.rundir": {"runs"},
        "import autodeeplab.optim as o, torch": {"optim"},
        "from autodeeplab import optim, __version__": {"optim"},
        "from ..runs import rundir": {"runs"},
        "from ..optim import sgd": {"optim"},
        "from .. import optim": {"optim"},
        "from . import cell": {"nets"},
        "import autodeeplab": set(),
    }
    for source, rooms in forms.items():
        assert imported_rooms(ast.parse(source), ("nets", "model_file.py")) == rooms, source
