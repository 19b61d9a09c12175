"""The run directory as the ranks other than 0 see it: readable (a resume reads rank 0's checkpoint), never
written — rank 0 writes every file of a distributed run (issue 15)."""

from __future__ import annotations

import contextlib
import os
import socket
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, TypeVar

from autodeeplab.fileio import atomic_write_json, loads_json
from autodeeplab.runs import distributed
from autodeeplab.runs.distributed import RankInfo
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


def open_rank_run(run_dir: str | Path, resume: bool, keep_checkpoints: int, ranks: RankInfo) -> RunDir:
    """Rank 0 opens (creates, or checks for ``resume``) the run directory; the other ranks wait for it and
    get a :class:`FollowerRun`. The ranks must agree on ``resume`` (each decided it from its command line
    and, after a torchrun restart, its view of the folder). If rank 0 fails (the folder exists, is
    locked, ...) every rank stops: rank 0 with its own message, the others with one line pointing at it.
    A new run under torchrun records its job in :data:`RESTART_MARKER` (see :func:`restart_marker`)."""
    distributed.agree(
        [float(resume)], "the resume decision (--resume, or a restart's view of the run)", ranks.world
    )
    if ranks.is_main:
        try:
            run = RunDir(run_dir, resume=resume, keep_checkpoints=keep_checkpoints)
            if not resume and "TORCHELASTIC_RUN_ID" in os.environ:
                atomic_write_json(run.path / RESTART_MARKER, restart_marker())
        except Exception:
            distributed.all_ok(False, ranks.world)  # the other ranks stop too
            raise
        distributed.all_ok(True, ranks.world)
        return run
    if not distributed.all_ok(True, ranks.world):
        raise distributed.DistributedError("rank 0 could not open the run directory; see its message")
    return FollowerRun(run_dir, keep_checkpoints)


T = TypeVar("T")


def rank0_first(read: Callable[[], T], ranks: RankInfo, what: str) -> T:
    """``read()`` on rank 0 first (it may set aside a corrupt checkpoint), then on the others; an error on
    rank 0 stops every rank (the others with one line) instead of leaving them waiting."""
    if ranks.world == 1:
        return read()
    if ranks.is_main:
        try:
            value = read()
        except Exception:
            distributed.all_ok(False, ranks.world)
            raise
        distributed.all_ok(True, ranks.world)
        return value
    if not distributed.all_ok(True, ranks.world):
        raise distributed.DistributedError(f"rank 0 could not read {what}; see its message")
    return read()


RESTART_MARKER = "torchrun.json"
"""Written by rank 0 into a new run directory under torchrun: which job made it, so that a restart of that
job resumes it and no other job's restart takes it over."""


def restart_marker() -> dict[str, Any]:
    """This job: torchrun's run id, and (for jobs without ``--rdzv-id``, whose id is ``none``) the host and
    the torchrun agent's process (the workers' parent, the same across the job's restarts)."""
    return {
        "run_id": os.environ.get("TORCHELASTIC_RUN_ID", ""),
        "host": socket.gethostname(),
        "agent_pid": os.getppid(),
    }


def made_by_this_job(run_dir: Path) -> bool:
    """Whether ``run_dir`` holds this torchrun job's :data:`RESTART_MARKER`."""
    try:
        marker = loads_json((run_dir / RESTART_MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    mine = restart_marker()
    if not isinstance(marker, dict) or marker.get("run_id") != mine["run_id"]:
        return False
    if mine["run_id"] not in ("", "none"):
        return True
    return (marker.get("host"), marker.get("agent_pid")) == (mine["host"], mine["agent_pid"])
