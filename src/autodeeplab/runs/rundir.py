"""Run directories, checkpoints with rotation and fallback, JSON-lines records and TensorBoard.

What a loop (search or training) needs to survive preemption and explain itself afterwards::

    run = RunDir(out_dir, resume=args.resume)            # refuses to reuse a non-empty folder unless resuming
    found = run.checkpoints.load_latest(warn=log)        # (state, path) or None; skips corrupt ones, says so
    if found:
        state, _ = found
        model.load_state_dict(state["model"]); restore_rng_state(state["rng"], generators={"train": g})
        run.filter_jsonl("metrics.jsonl", lambda r: r["step"] <= state["global_step"])  # drop unsaved lines
    with GracefulInterrupt() as stop:
        for step in ...:
            loss = ...; check_finite(loss.item(), "loss", epoch=e, step=s)
            run.append_jsonl("metrics.jsonl", {...})
            if step % every == 0 or stop.requested:
                state = {..., "rng": capture_rng_state(generators={"train": g})}
                run.checkpoints.save(state, f"epoch{e:04d}-step{s:06d}")
            if stop.requested:
                print(resume_hint("search", run.path, stop.signal_name)); return

Each checkpoint is one checksummed, atomically written file of :mod:`autodeeplab.checkpoint_io`.
:class:`CheckpointManager` names files ``NNNNNN-<tag>.pt`` (a sequence number, so "newest" never depends on
clocks or tag spelling), keeps the newest ``keep``, and on load moves a corrupt file aside to
``*.pt.corrupt`` and falls back to the previous good one.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import socket
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

from autodeeplab.checkpoint_io import load_checkpoint, save_checkpoint
from autodeeplab.errors import AutoDeepLabError, CheckpointError, describe_os_error
from autodeeplab.fileio import atomic_write_json, atomic_write_text, loads_json
from autodeeplab.runs.state import NonFiniteError

CHECKPOINT_SUFFIX = ".pt"
CORRUPT_SUFFIX = ".corrupt"
LOCK_FILE = "run.lock"
"""Held by the process working on a run (:meth:`RunDir.locked`)."""
_CKPT_NAME = re.compile(r"^(\d{6,})-(.+)\.pt$")
_TAG = re.compile(r"^[A-Za-z0-9_.-]+$")


class RunDirError(AutoDeepLabError):
    """A run directory cannot be created, reused or resumed."""


class Interrupted(KeyboardInterrupt):
    """Ctrl-C outside a loop's own handling, carrying the one line that says how to continue."""


class CheckpointManager:
    """The checkpoints of one run in ``directory``: save with rotation, find and load the newest good one."""

    def __init__(self, directory: str | os.PathLike[str], keep: int = 3) -> None:
        if keep < 1:
            raise ValueError(f"keep must be at least 1, got {keep}")
        self.directory = Path(directory)
        self.keep = keep

    def paths(self) -> list[Path]:
        """Checkpoint files, oldest first (temporary files of an interrupted write are ignored)."""
        if not self.directory.is_dir():
            return []
        found = [(int(m.group(1)), p) for p in self.directory.iterdir() if (m := _CKPT_NAME.match(p.name))]
        return [p for _, p in sorted(found)]

    def latest(self) -> Path | None:
        """The newest checkpoint file, or None (not checked for corruption: see :meth:`load_latest`)."""
        paths = self.paths()
        return paths[-1] if paths else None

    def save(self, state: Mapping[str, Any], tag: str) -> Path:
        """Save ``state`` as the newest checkpoint ``NNNNNN-<tag>.pt``; delete all but the newest ``keep``."""
        if not _TAG.match(tag):
            raise ValueError(f"checkpoint tag {tag!r}: use letters, digits, '.', '_' and '-' only")
        paths = self.paths()
        sequence = int(_CKPT_NAME.match(paths[-1].name).group(1)) + 1 if paths else 1  # type: ignore[union-attr]
        path = self.directory / f"{sequence:06d}-{tag}{CHECKPOINT_SUFFIX}"
        save_checkpoint(path, state)
        # Rotate only after the new file is safely in place, so that a crash never leaves zero checkpoints.
        for old in self.paths()[: -self.keep]:
            old.unlink(missing_ok=True)
        self._remove_stale_temporaries()
        return path

    def _remove_stale_temporaries(self) -> None:
        # fileio's temporary files are ".<name>.<random>.tmp"; a SIGKILL mid-write leaves one behind.
        for tmp in self.directory.glob(f".*{CHECKPOINT_SUFFIX}.*.tmp"):
            tmp.unlink(missing_ok=True)

    def load_latest(self, warn: Callable[[str], None] = print) -> tuple[dict[str, Any], Path] | None:
        """``(state, path)`` of the newest loadable checkpoint, or None when there is none at all.

        A corrupt newer file is reported through ``warn``, renamed to ``*.pt.corrupt`` (kept for inspection,
        out of the rotation) and skipped. Raises :class:`CheckpointError` when every checkpoint is corrupt.
        """
        paths = self.paths()
        if not paths:
            return None
        errors = []
        for path in reversed(paths):
            try:
                state = load_checkpoint(path)
            except CheckpointError as exc:
                errors.append(str(exc))
                aside = free_name(path.with_name(path.name + CORRUPT_SUFFIX))
                try:
                    os.rename(path, aside)  # free_name: an earlier set-aside file is never replaced
                    warn(f"warning: {exc}; moved it aside to {aside.name}")
                except OSError:  # a read-only folder: still skip it
                    warn(f"warning: {exc}; skipping it")
                continue
            if errors:
                warn(f"warning: falling back to the previous good checkpoint {path}")
            return state, path
        raise CheckpointError(f"{self.directory}: no loadable checkpoint (all {len(paths)} are corrupt)")


# ----------------------------------------------------------------------------------------------------------
# The run directory
# ----------------------------------------------------------------------------------------------------------


class RunDir:
    """A run's folder: JSON/JSONL files written safely, and its :attr:`checkpoints`.

    A new run refuses a folder that exists and is not empty (so that two runs never mix their files);
    ``resume=True`` requires the folder to exist. A new run that stops on a user error before its first
    checkpoint removes what it wrote (see :meth:`kept_resumable`), so the same command can run again.
    """

    def __init__(self, path: str | os.PathLike[str], resume: bool = False, keep_checkpoints: int = 3) -> None:
        self.path = Path(path)
        self.fresh = not resume
        """A new run: the folder was empty or absent, so everything in it is this run's."""
        self._created = False
        if resume:
            if not self.path.is_dir():
                raise RunDirError(f"{self.path}: no such run directory to resume")
        else:
            if self.path.exists() and not self.path.is_dir():
                raise RunDirError(f"{self.path}: exists and is not a directory")
            if self.path.is_dir() and any(self.path.iterdir()):
                raise RunDirError(
                    f"{self.path}: run directory exists and is not empty; resume it with --resume "
                    f"{self.path} or choose another output directory"
                )
            self._created = not self.path.exists()
            try:
                self.path.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise RunDirError(f"{self.path}: cannot create run directory ({exc.strerror})") from None
        self.checkpoints = CheckpointManager(self.path / "checkpoints", keep=keep_checkpoints)

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """Hold ``run.lock`` (the owner's host and pid) while the run works, so that a second process
        resuming the same run at the same time is refused in one line instead of mixing checkpoints.

        A lock left by a process that no longer runs (killed, machine restarted) is taken over; one from
        another host cannot be checked and is refused with the file to delete.
        """
        lock = self.file(LOCK_FILE)
        owner = f"{socket.gethostname()} {os.getpid()}\n"
        for _ in range(2):
            try:
                fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                holder = _live_holder(lock)
                if holder:
                    raise RunDirError(
                        f"{self.path}: in use by {holder} ({lock}); wait for it to finish"
                    ) from None
                with contextlib.suppress(FileNotFoundError):
                    lock.unlink()  # stale: its process is gone
                continue
            except OSError as exc:
                raise RunDirError(
                    f"{self.path}: cannot write in the run directory ({exc.strerror})"
                ) from None
            with os.fdopen(fd, "w") as f:
                f.write(owner)
            break
        else:
            raise RunDirError(f"{self.path}: could not take {lock}; another process keeps making it")
        try:
            yield
        finally:
            with contextlib.suppress(OSError):
                if lock.read_text() == owner:
                    lock.unlink()

    @contextlib.contextmanager
    def kept_resumable(self, command: str, continue_with: str | None = None) -> Iterator[None]:
        """Leave the folder, whatever stops the run, in a state from which the same command or ``--resume``
        works, and say which (``command``: ``search`` or ``train``; ``continue_with``: the command line
        that continues in every case, for a run that is part of a larger one such as the pipeline).

        A new run that stops before its first checkpoint — a user error (bad data, config, NaN), the system
        refusing a write (disk full, read-only folder) or Ctrl-C during start-up — removes what it wrote:
        without this its ``config.yaml``/``split.json`` would block the same ``-o`` ("not empty"). Only a
        fresh run's folder is touched (it was empty or absent at the start, so everything in it is this
        run's); a resumed run and a run with a checkpoint keep it all, and ``--resume`` continues from the
        newest checkpoint (or from the beginning when there is none). A system error becomes one
        :class:`RunDirError` naming the path, what the system said and the command that continues.
        """
        try:
            yield
        except (AutoDeepLabError, OSError, KeyboardInterrupt) as exc:
            unstarted = self.checkpoints.latest() is None
            # Never another process's files: two new runs started on one empty folder at once.
            theirs = _live_holder(self.file(LOCK_FILE)) is not None
            removed = self.fresh and unstarted and not theirs
            if removed:
                self._remove_contents()
            if continue_with:
                then = f"continue with: {continue_with}"
            elif removed:
                then = "nothing of this run was kept; run the same command again"
            else:
                then = f"resume with: autodeeplab {command} --resume {self.path}"
            if isinstance(exc, OSError) and exc.errno is not None:
                raise RunDirError(f"{describe_os_error(exc)}; once that is fixed, {then}") from None
            if isinstance(exc, KeyboardInterrupt) and not removed:
                raise Interrupted(f"interrupted; {then}") from None
            if isinstance(exc, NonFiniteError) and unstarted and exc.hint is None:
                # there is no good checkpoint to keep: say so, and what continues
                fix = "no checkpoint was written before it; lower the learning rate or check the data"
                raise NonFiniteError(exc.what, f"{fix}; {then}") from None
            raise

    def _remove_contents(self) -> None:
        # Best effort: a folder the system will not let us write in holds nothing of ours anyway.
        for child in list(self.path.iterdir()) if self.path.is_dir() else []:
            if child.is_dir() and not child.is_symlink():
                shutil.rmtree(child, ignore_errors=True)
            else:
                with contextlib.suppress(OSError):
                    child.unlink(missing_ok=True)
        if self._created:
            with contextlib.suppress(OSError):
                self.path.rmdir()

    def file(self, name: str) -> Path:
        """The path of ``name`` inside the run directory."""
        return self.path / name

    def write_json(self, name: str, obj: Any) -> Path:
        """Write ``obj`` as JSON atomically."""
        path = self.file(name)
        atomic_write_json(path, obj)
        return path

    def read_json(self, name: str) -> Any:
        path = self.file(name)
        try:
            return loads_json(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise RunDirError(f"{path}: missing from the run directory") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise RunDirError(f"{path}: cannot read ({exc})") from None
        except json.JSONDecodeError as exc:
            raise RunDirError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno})") from None

    def append_jsonl(self, name: str, record: Mapping[str, Any]) -> None:
        """Append one JSON line, flushed and fsynced so that a kill loses at most the line being written."""
        line = json.dumps(dict(record), separators=(", ", ": ")) + "\n"
        with open(self.file(name), "a", encoding="utf-8") as f:
            f.write(line)
            f.flush()
            os.fsync(f.fileno())

    def read_jsonl(self, name: str) -> list[dict[str, Any]]:
        """All complete records of a JSON-lines file (``[]`` if absent); a torn last line is skipped."""
        return read_jsonl(self.file(name))

    def filter_jsonl(self, name: str, keep: Callable[[dict[str, Any]], bool]) -> int:
        """Rewrite ``name`` atomically with the records where ``keep(record)``; returns the number dropped.

        On resume, drops the lines logged after the checkpoint so that they are not written twice.
        """
        path = self.file(name)
        if not path.exists():
            return 0
        records = read_jsonl(path)
        kept = [r for r in records if keep(r)]
        atomic_write_text(path, "".join(json.dumps(r, separators=(", ", ": ")) + "\n" for r in kept))
        return len(records) - len(kept)


def read_jsonl(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """Records of a JSON-lines file; ``[]`` if it is absent. A torn final line (killed mid-write) is skipped;
    a bad line elsewhere (not JSON, not an object, an ``epoch`` or ``step`` that is not an integer: what
    resuming and plotting count by) is a :class:`RunDirError` naming the file and line."""
    path = Path(path)
    if not path.exists():
        return []
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError:
        raise RunDirError(f"{path}: not a JSON-lines text file (not UTF-8)") from None
    except OSError as exc:
        raise RunDirError(f"{path}: cannot read ({exc.strerror})") from None
    records = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = loads_json(line)
        except json.JSONDecodeError:
            if number == len(lines):
                break
            raise RunDirError(f"{path}: line {number} is not valid JSON") from None
        if not isinstance(record, dict):
            raise RunDirError(f"{path}: line {number} is not a JSON object")
        for key in ("epoch", "step"):
            if key in record and (type(record[key]) is not int):
                raise RunDirError(f"{path}: line {number}: {key} is not an integer ({record[key]!r})")
        records.append(record)
    return records


def maybe_tensorboard(
    run_dir: str | os.PathLike[str], enabled: bool, warn: Callable[[str], None] = print
) -> Any:
    """A ``torch.utils.tensorboard.SummaryWriter`` logging to ``run_dir/tensorboard``, or None.

    None when disabled, or when the optional ``tensorboard`` package is missing (one notice via ``warn``).
    """
    if not enabled:
        return None
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        warn("notice: tensorboard is not installed (pip install 'autodeeplab[tensorboard]'); no event files")
        return None
    return SummaryWriter(log_dir=str(Path(run_dir) / "tensorboard"))


def free_name(path: Path) -> Path:
    """``path`` if nothing is there, else the first of ``path.1``, ``path.2``, ... that is free."""
    candidate, n = path, 0
    while candidate.exists() or candidate.is_symlink():
        n += 1
        candidate = path.with_name(f"{path.name}.{n}")
    return candidate


def _live_holder(lock: Path) -> str | None:
    """``"process N on HOST"`` when ``lock`` names a process that still runs (or one on another host,
    which cannot be checked); ``None`` when the lock is stale or unreadable."""
    try:
        host, pid_text = lock.read_text().split()
        pid = int(pid_text)
    except (OSError, ValueError):
        return None  # torn or foreign content: a crash while writing it
    if host != socket.gethostname():
        return f"process {pid} on {host} (delete the lock file if that run has ended)"
    if pid == os.getpid():
        return None  # our own pid: the earlier holder was a process that had this pid and is gone
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        pass  # it exists, owned by someone else
    return f"process {pid}"
