"""What ``--resume`` may change: the difference between a checkpoint's settings and the resolved ones.

A resumed run may only change settings that cannot alter what the saved weights mean (run length,
checkpointing, workers, device, the data's location); each phase names its own list. Allowed changes are
recorded in ``config.yaml`` under ``run_info.resumed_with``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from autodeeplab.config.schema import _short_repr
from autodeeplab.config.settings import (
    RESUMED_WITH_KEY,
    _plain,
    config_to_dict,
    dump_config_yaml,
    read_run_info,
)
from autodeeplab.errors import CheckpointError, ConfigError


def config_changes(
    old: Mapping[str, Any], new: Mapping[str, Any], prefix: str = ""
) -> list[tuple[str, Any, Any]]:
    """``(dotted key, old value, new value)`` for each setting that differs between two
    :func:`config_to_dict` mappings, in field order. Keys that only one side has (a config written by
    another version) are not changes."""
    changes: list[tuple[str, Any, Any]] = []
    for key, value in new.items():
        if key not in old:
            continue
        before = old[key]
        if isinstance(value, Mapping) and isinstance(before, Mapping):
            changes.extend(config_changes(before, value, f"{prefix}{key}."))
        elif _plain(before) != _plain(value):
            changes.append((f"{prefix}{key}", _plain(before), _plain(value)))
    return changes


def check_resume_changes(
    stored: Mapping[str, Any], config: Any, allowed: Collection[str], source: str
) -> list[tuple[str, Any, Any]]:
    """The settings of ``config`` that differ from ``stored`` (the config a checkpoint was written with).

    Returns the changes, all within ``allowed`` (keys that cannot alter the weights' meaning: run length,
    checkpointing, workers, device, the data's location). Raises :class:`ConfigError` naming the first other
    changed key with its old and new value: such a change would not fit the saved weights or would silently
    break the exact resume.
    """
    changes = config_changes(stored, config_to_dict(config))
    for key, old, new in changes:
        if key not in allowed:
            raise ConfigError(
                f"{source}: {key} cannot change on resume (the run has {_short_repr(old)}, now "
                f"{_short_repr(new)}); only {', '.join(sorted(allowed))} may change"
            )
    return changes


def record_resume_changes(
    cfg: Any, path: str | Path, changes: Sequence[tuple[str, Any, Any]], checkpoint: str
) -> None:
    """Rewrite ``config.yaml`` at ``path`` with the resolved ``cfg`` after a resume that changed
    ``changes``, keeping its ``run_info`` and appending ``{"checkpoint", "changed": {key: [old, new]}}`` to
    ``run_info.resumed_with``. Written atomically: a kill leaves the old or the new file, never half."""
    path = Path(path)
    info = read_run_info(path) if path.exists() else {}
    history = list(info.get(RESUMED_WITH_KEY) or [])
    history.append({"checkpoint": checkpoint, "changed": {key: [old, new] for key, old, new in changes}})
    dump_config_yaml(cfg, path, {**info, RESUMED_WITH_KEY: history})


def latest_for_resume(
    run: Any, echo: Callable[[str], None], results: Sequence[str], records: Sequence[str]
) -> tuple[dict[str, Any], Path] | None:
    """``(state, path)`` of the newest good checkpoint of ``run``
    (a :class:`~autodeeplab.runs.rundir.RunDir`), or None: the run stopped before its first checkpoint
    (killed, the disk full, the power gone) and starts again from the beginning with its settings.

    Starting again drops the JSON-lines ``records`` of the earlier attempt (as a resume drops the lines
    logged after its checkpoint). A run without checkpoints that holds one of its final ``results`` had its
    checkpoints deleted after it finished: that is a :class:`ConfigError`, not a restart over its results.
    """
    loaded = run.checkpoints.load_latest(warn=echo)
    if loaded is not None:
        return loaded
    done = [name for name in results if run.file(name).exists()]
    if done:
        raise ConfigError(
            f"{run.path}: nothing to resume (no checkpoint in {run.path / 'checkpoints'}, and the run holds "
            f"its results: {done[0]}); start a new run in another folder"
        )
    dropped = sum(run.filter_jsonl(name, lambda record: False) for name in records)
    echo(
        f"note: {run.path} stopped before its first checkpoint; starting it from the beginning"
        + (f" ({dropped} records of the earlier attempt dropped)" if dropped else "")
    )
    return None


PENDING_CHANGES = "resume_changes_pending"
"""Key under which a loaded checkpoint carries its allowed settings changes from the check (before any data
is read) to the restore; they reach ``config.yaml`` only once the checkpoint has been put back, so a resume
refused on the way changes nothing on disk."""


def accept_resume_changes(
    cfg: Any,
    run_path: Path,
    changes: Sequence[tuple[str, Any, Any]],
    checkpoint: str,
    echo: Callable[[str], None],
) -> None:
    """Record allowed ``changes`` (from :func:`check_resume_changes`) in ``config.yaml`` and say so."""
    if changes:
        record_resume_changes(cfg, Path(run_path) / "config.yaml", changes, checkpoint)
        echo("resuming with " + ", ".join(f"{key} {old!r} -> {new!r}" for key, old, new in changes))


@contextlib.contextmanager
def checkpoint_must_fit(path: Path, what: str) -> Iterator[None]:
    """Turn a ``load_state_dict`` failure inside the block (shapes, missing keys, parameter groups) into a
    one-line :class:`CheckpointError`: ``<path>: does not fit this <what> (<first line of the error>)``."""
    try:
        yield
    except (RuntimeError, ValueError, KeyError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:160]
        raise CheckpointError(f"{path}: does not fit this {what} ({first})") from None
