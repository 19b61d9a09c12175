"""Small file helpers shared by every module that writes user-visible files.

Everything the package writes goes through :func:`atomic_write_bytes` so that a crash or a kill
never leaves a half-written file where a good one was. ``tempfile.mkstemp`` creates its file with mode
0600; the file gets the mode an ordinary ``open(path, "w")`` would have given it (``0o666 & ~umask``)
before the rename, or keeps the mode of the file it replaces.
"""

from __future__ import annotations

import json
import os
import stat
import tempfile
import threading
from pathlib import Path
from typing import Any

DEFAULT_FILE_MODE = 0o666
"""Mode of a new file before the umask, as ``open()`` creates it."""

_UMASK_LOCK = threading.Lock()


def current_umask() -> int:
    """The process umask, read without changing it where the system allows.

    Linux reports it in ``/proc/self/status`` (since 4.7). Elsewhere the only way is to set and restore
    it; a lock keeps two of our own threads from racing on that.
    """
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    with _UMASK_LOCK:
        mask = os.umask(0o077)
        os.umask(mask)
    return mask


def _final_mode(path: Path) -> int:
    """The mode a rewrite of ``path`` should have: the existing file's, else ``0o666 & ~umask``."""
    try:
        return stat.S_IMODE(path.stat().st_mode)
    except OSError:
        return DEFAULT_FILE_MODE & ~current_umask()


def loads_json(text: str) -> Any:
    """``json.loads`` whose every failure on hostile text is a :class:`json.JSONDecodeError` (what callers
    turn into their one-line error): nesting deeper than Python's recursion limit and integers too long to
    convert raise other exceptions from the standard library."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        raise
    except RecursionError:
        raise json.JSONDecodeError("nested too deeply", text, 0) from None
    except ValueError as exc:  # e.g. "Exceeds the limit (4300 digits) for integer string conversion"
        raise json.JSONDecodeError(str(exc).split(":")[0], text, 0) from None


def parse_json_document(text: str, source: str, error: type[Exception]) -> Any:
    """``loads_json`` whose failure is one ``error`` line naming ``source`` (architecture files)."""
    try:
        return loads_json(text)
    except json.JSONDecodeError as exc:
        raise error(f"{source}: not valid JSON ({exc.msg} at line {exc.lineno})") from None


def read_document(path: Path, what: str, error: type[Exception]) -> str:
    """The UTF-8 text of ``path``; a missing or unreadable file is one ``error`` line naming it."""
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise error(f"{path}: no such {what} file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise error(f"{path}: cannot read {what} ({exc})") from None


def loads_yaml(text: str, plain: bool = False) -> Any:
    """``yaml.safe_load`` whose every failure on hostile text is a :class:`yaml.YAMLError` (deep nesting
    and over-long integers raise other exceptions from PyYAML and Python).

    ``plain``: every scalar comes back as the string it is written as (no ``null``/``yes``/number typing),
    for files whose values are names.
    """
    import yaml

    try:
        return yaml.load(text, Loader=yaml.BaseLoader) if plain else yaml.safe_load(text)
    except yaml.YAMLError:
        raise
    except RecursionError:
        raise yaml.MarkedYAMLError(problem="nested too deeply") from None
    except ValueError as exc:
        raise yaml.MarkedYAMLError(problem=str(exc).split(":")[0]) from None


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same folder, fsync, then rename."""
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, _final_mode(path))
        os.replace(tmp, path)
    except BaseException as exc:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        folders = {str(p) for p in path.parents}
        if isinstance(exc, OSError) and exc.errno is not None and exc.filename not in folders:
            # the temporary file is an internal name: the user asked for ``path`` (a folder that could not
            # be made keeps its own name)
            raise OSError(exc.errno, exc.strerror, str(path)) from None
        raise


def atomic_write_text(path: str | os.PathLike[str], text: str) -> None:
    """UTF-8 text version of :func:`atomic_write_bytes`."""
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike[str], obj: Any, indent: int | None = 2) -> None:
    """Write ``obj`` as JSON atomically (trailing newline included)."""
    atomic_write_text(path, json.dumps(obj, indent=indent) + "\n")
