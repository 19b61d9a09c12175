"""Run directories, atomic checkpoints with rotation and fallback, RNG state, signals and NaN checks.

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

A checkpoint file is an ordinary ``torch.save`` of ``{"format": "autodeeplab-checkpoint", "version": 1,
"digest": sha256 hex, "state": state}``; the digest covers every tensor byte and value of ``state`` because
torch's zip reader does not notice flipped bytes in tensor data. Files are written to a temporary file,
fsynced and renamed, so a crash or SIGKILL mid-write leaves the previous checkpoint intact.
:class:`CheckpointManager` names files ``NNNNNN-<tag>.pt`` (a sequence number, so "newest" never depends on
clocks or tag spelling), keeps the newest ``keep``, and on load moves a corrupt file aside to
``*.pt.corrupt`` and falls back to the previous good one.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import io
import json
import os
import pickle
import re
import shutil
import struct
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import torch

from autodeeplab.errors import AutoDeepLabError, CheckpointError
from autodeeplab.fileio import atomic_write_bytes, atomic_write_json, atomic_write_text

CHECKPOINT_FORMAT = "autodeeplab-checkpoint"
CHECKPOINT_VERSION = 1
CHECKPOINT_SUFFIX = ".pt"
CORRUPT_SUFFIX = ".corrupt"
_CKPT_NAME = re.compile(r"^(\d{6,})-(.+)\.pt$")
_TAG = re.compile(r"^[A-Za-z0-9_.-]+$")
_ZIP_MAGIC = b"PK\x03\x04"  # torch.save's format is a zip archive


class RunDirError(AutoDeepLabError):
    """A run directory cannot be created, reused or resumed."""


# ----------------------------------------------------------------------------------------------------------
# Single checkpoint files
# ----------------------------------------------------------------------------------------------------------


def _digest(state: Any) -> str:
    """SHA-256 over the structure and contents of ``state``; raises TypeError for what torch cannot load."""
    h = hashlib.sha256()

    def walk(obj: Any, where: str) -> None:
        if isinstance(obj, torch.Tensor):
            t = obj.detach().cpu().contiguous().reshape(-1)
            h.update(f"T{t.dtype}{tuple(obj.shape)}".encode())
            if t.numel():
                h.update(t.view(torch.uint8).numpy())  # hashes the buffer in place, no copy
        elif isinstance(obj, Mapping):
            h.update(f"D{len(obj)}".encode())
            for key, value in obj.items():
                walk(key, f"{where}[key]")
                walk(value, f"{where}[{key!r}]")
        elif isinstance(obj, (list, tuple)):
            h.update(f"L{len(obj)}".encode())
            for i, value in enumerate(obj):
                walk(value, f"{where}[{i}]")
        elif isinstance(obj, float):
            h.update(b"F" + struct.pack("<d", obj))
        elif obj is None or isinstance(obj, (bool, int, str, bytes, complex, torch.dtype, torch.device)):
            h.update(f"{type(obj).__name__}:{obj!r};".encode())
        else:
            raise TypeError(
                f"checkpoint {where}: {type(obj).__module__}.{type(obj).__name__} cannot be loaded back "
                "with weights_only=True; store tensors, numbers, strings, None, lists and dicts"
            )

    walk(state, "state")
    return h.hexdigest()


def save_checkpoint(path: str | os.PathLike[str], state: Mapping[str, Any]) -> None:
    """Write ``state`` (nested dicts/lists of tensors, numbers, str, bool, None) atomically to ``path``."""
    payload = {
        "format": CHECKPOINT_FORMAT,
        "version": CHECKPOINT_VERSION,
        "digest": _digest(state),
        "state": dict(state),
    }
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    atomic_write_bytes(path, buffer.getvalue())


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return (lines[0] if lines else type(exc).__name__)[:160]


def _cut_inside_zip_magic(path: Path) -> bool:
    """A file of 1-3 bytes that begins like a zip (what torch.save writes): a checkpoint cut off at once."""
    try:
        with open(path, "rb") as f:
            head = f.read(len(_ZIP_MAGIC))
    except OSError:
        return False
    return 0 < len(head) < len(_ZIP_MAGIC) and _ZIP_MAGIC.startswith(head)


def load_checkpoint(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint` without executing pickled code.

    Raises :class:`CheckpointError` naming the file when it is missing, truncated, corrupt or foreign.
    """
    path = Path(path)
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        raise CheckpointError(f"{path}: no such checkpoint") from None
    except OSError as exc:
        raise CheckpointError(f"{path}: cannot read checkpoint ({exc.strerror})") from None
    if size == 0:
        raise CheckpointError(f"{path}: checkpoint is empty (interrupted write?)")
    try:
        # From the path, not from bytes in memory: torch reads a file several times faster.
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except OSError as exc:
        if exc.errno is None or exc.errno == errno.EINVAL:
            # torch's zip reader reports a cut-off file as OSError(EINVAL) or with no errno at all; the file
            # exists and is not empty, so it is the bytes that are wrong, not the file system.
            detail = exc.strerror or _first_line(exc)
            raise CheckpointError(f"{path}: truncated or corrupt checkpoint ({detail})") from None
        raise CheckpointError(f"{path}: cannot read checkpoint ({exc.strerror})") from None
    except Exception as exc:  # torch raises RuntimeError, UnpicklingError, EOFError, ... for bad bytes
        # A zip cut off inside its first bytes is read as a legacy pickle and refused by the weights-only
        # unpickler too; that one is truncated, not foreign.
        refused = isinstance(exc, pickle.UnpicklingError) and "Weights only" in str(exc)
        if refused and not _cut_inside_zip_magic(path):
            raise CheckpointError(
                f"{path}: refused to load: it holds objects that need code execution (not an autodeeplab "
                "checkpoint)"
            ) from None
        raise CheckpointError(f"{path}: truncated or corrupt checkpoint ({_first_line(exc)})") from None
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path}: not an autodeeplab checkpoint")
    version = payload.get("version")
    if not isinstance(version, int) or version > CHECKPOINT_VERSION:
        raise CheckpointError(
            f"{path}: checkpoint format version {version!r} is newer than this autodeeplab reads "
            f"({CHECKPOINT_VERSION}); upgrade autodeeplab"
        )
    state = payload.get("state")
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: corrupt checkpoint (no state)")
    try:
        ok = _digest(state) == payload.get("digest")
    except TypeError:
        ok = False
    if not ok:
        raise CheckpointError(f"{path}: corrupt checkpoint (content does not match its checksum)")
    return state


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
                aside = path.with_name(path.name + CORRUPT_SUFFIX)
                try:
                    os.replace(path, aside)
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
    checkpoint removes what it wrote (see :meth:`removed_if_unstarted`), so the same command can run again.
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
    def removed_if_unstarted(self) -> Iterator[None]:
        """Undo a new run that fails on a user error (bad data, config, NaN) before its first checkpoint.

        Without this, its ``config.yaml``/``split.json`` would block the same ``-o`` ("not empty") while
        ``--resume`` has nothing to resume. Only a fresh run's folder is touched (it was empty or absent at
        the start, so everything in it is this run's); a resumed run and a run with a checkpoint keep it all.
        """
        try:
            yield
        except AutoDeepLabError:
            if self.fresh and self.checkpoints.latest() is None:
                self._remove_contents()
            raise

    def _remove_contents(self) -> None:
        for child in list(self.path.iterdir()) if self.path.is_dir() else []:
            if child.is_dir() and not child.is_symlink():
                shutil.rmtree(child, ignore_errors=True)
            else:
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
            return json.loads(path.read_text(encoding="utf-8"))
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
    a bad line elsewhere is a :class:`RunDirError` naming the file and line."""
    path = Path(path)
    if not path.exists():
        return []
    lines = path.read_text(encoding="utf-8").splitlines()
    records = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            if number == len(lines):
                break
            raise RunDirError(f"{path}: line {number} is not valid JSON") from None
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
