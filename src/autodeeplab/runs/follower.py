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


def open_rank_run(run_dir: str | Path, resume: bool, keep_checkpoints: int, ranks: Any) -> RunDir:
    """Rank 0 opens (creates, or checks for ``resume``) the run directory; the other ranks wait for it and
    get a :class:`FollowerRun`. If rank 0 fails (the folder exists, is locked, ...) every rank stops: rank 0
    with its own message, the others with one line pointing at it. ``ranks``: a
    :class:`~autodeeplab.runs.distributed.RankInfo`."""
    from autodeeplab.runs import distributed

    if ranks.is_main:
        try:
            run = RunDir(run_dir, resume=resume, keep_checkpoints=keep_checkpoints)
        except Exception:
            distributed.all_ok(False, ranks.world)  # the other ranks stop too
            raise
        distributed.all_ok(True, ranks.world)
        return run
    if not distributed.all_ok(True, ranks.world):
        raise distributed.DistributedError("rank 0 could not open the run directory; see its message")
    return FollowerRun(run_dir, keep_checkpoints)
