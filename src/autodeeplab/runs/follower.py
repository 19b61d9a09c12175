"""The run directory as the ranks other than 0 see it: readable (a resume reads rank 0's checkpoint), never
written — rank 0 writes every file of a distributed run (issue 15)."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

from autodeeplab.runs.rundir import CheckpointManager, RunDir


class _ReadOnlyCheckpoints(CheckpointManager):
    def save(self, state: Mapping[str, Any], tag: str) -> Path:  # rank 0 saves the one checkpoint
        return self.directory / f"{tag}.pt"


class FollowerRun(RunDir):
    """Rank > 0's view of rank 0's run directory (which exists by then)."""

    def __init__(self, path: str | Path, keep_checkpoints: int = 3) -> None:  # noqa: D107
        self.path = Path(path)
        self.fresh = False
        self._created = False
        self.checkpoints = _ReadOnlyCheckpoints(self.path / "checkpoints", keep=keep_checkpoints)

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        yield

    @contextlib.contextmanager
    def kept_resumable(self, command: str, continue_with: str | None = None) -> Iterator[None]:
        yield

    def write_json(self, name: str, obj: Any) -> Path:
        return self.file(name)

    def append_jsonl(self, name: str, record: Any) -> None:
        return None

    def filter_jsonl(self, name: str, keep: Callable[[dict], bool]) -> None:
        return None
