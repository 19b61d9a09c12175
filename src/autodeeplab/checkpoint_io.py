"""The checksummed checkpoint file: :func:`save_checkpoint` and :func:`load_checkpoint`.

A checkpoint file is an ordinary ``torch.save`` of ``{"format": "autodeeplab-checkpoint", "version": 1,
"digest": sha256 hex, "state": state}``; the digest covers every tensor byte and value of ``state`` because
torch's zip reader does not notice flipped bytes in tensor data. ``state`` holds only what
``torch.load(weights_only=True)`` reads back (tensors, numbers, strings, None, lists, dicts), so loading
never executes pickled code. Files are written through :func:`autodeeplab.fileio.atomic_write_bytes`
(temporary file, fsync, rename), so a crash or SIGKILL mid-write leaves the previous file intact.

The one file format below both the run machinery (:mod:`autodeeplab.runs.rundir` rotates these files) and
the model file (:mod:`autodeeplab.nets.model_file` writes ``model.pt`` as one); it knows nothing of either.
"""

from __future__ import annotations

import errno
import hashlib
import io
import os
import pickle
import struct
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from autodeeplab.errors import CheckpointError
from autodeeplab.fileio import atomic_write_bytes

CHECKPOINT_FORMAT = "autodeeplab-checkpoint"
CHECKPOINT_VERSION = 1
_ZIP_MAGIC = b"PK\x03\x04"  # torch.save's format is a zip archive


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


def _first_line(exc: BaseException, limit: int = 160) -> str:
    """The first line of ``exc``'s message, at most ``limit`` characters: cut after its last whole sentence
    that fits (torch's zip errors run on with advice about reporting bugs), else at a word, marked "…"."""
    lines = str(exc).strip().splitlines()
    line = lines[0] if lines else type(exc).__name__
    if len(line) <= limit:
        return line
    end = line.rfind(". ", 0, limit)
    if end > 0:
        return line[:end]
    space = line.rfind(" ", 0, limit - 1)
    return line[: space if space > 0 else limit - 1] + "…"


def _head(path: Path) -> bytes:
    """The file's first bytes, as many as torch.save's zip signature has (fewer for a shorter file; none
    when it cannot be read)."""
    try:
        with open(path, "rb") as f:
            return f.read(len(_ZIP_MAGIC))
    except OSError:
        return b""


def _cut_inside_zip_magic(head: bytes) -> bool:
    """1-3 bytes that begin like a zip (what torch.save writes): a checkpoint cut off at once."""
    return 0 < len(head) < len(_ZIP_MAGIC) and _ZIP_MAGIC.startswith(head)


def _has_torch_header(head: bytes) -> bool:
    """Whether a file beginning with ``head`` begins as torch.save writes: a zip archive, or (the legacy
    format) a pickle's protocol opcode for protocols 2-5."""
    return head.startswith(_ZIP_MAGIC) or (
        head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05")
    )


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
        head = _head(path)
        cut = _cut_inside_zip_magic(head)
        if not cut and not _has_torch_header(head):
            # bytes torch.save never writes (a JSON or YAML file, random bytes), which torch tried to read
            # as a legacy pickle: whatever that failed on says nothing useful
            raise CheckpointError(f"{path}: not a checkpoint (not in the format torch.save writes)") from None
        refused = isinstance(exc, pickle.UnpicklingError) and "Weights only" in str(exc)
        if refused and not cut:
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
