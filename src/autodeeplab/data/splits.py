"""Epoch bookkeeping through dataset wrappers (Subset, ConcatDataset).

The trainA/trainB split of the search is made once for every dataset by
:func:`autodeeplab.runs.sampling.split_halves` (indices, written to the run directory).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from torch.utils.data import ConcatDataset, Dataset, Subset

from autodeeplab.data.base import SegmentationDataset
from autodeeplab.data.problems import DataProblemError, problem
from autodeeplab.fileio import atomic_write_json, loads_json

SPLIT_RECORD = "data_split.json"
"""Where a run records the split a reader made itself (a plain folder without split lists)."""


def set_epoch(dataset: Dataset, epoch: int) -> None:
    """Call ``set_epoch(epoch)`` on every :class:`SegmentationDataset` in ``dataset`` (through Subsets)."""
    if isinstance(dataset, SegmentationDataset):
        dataset.set_epoch(epoch)
    elif isinstance(dataset, Subset):
        set_epoch(dataset.dataset, epoch)
    elif isinstance(dataset, ConcatDataset):
        for part in dataset.datasets:
            set_epoch(part, epoch)
    elif hasattr(dataset, "set_epoch"):
        dataset.set_epoch(epoch)  # type: ignore[attr-defined]


def record_split(run_dir: Path, dataset: Any) -> None:
    """Write the split ``dataset`` made itself into ``run_dir/data_split.json`` (a plain folder without
    lists: see :func:`autodeeplab.data.folder.seeded_split`), or check it against the one written when the
    run started: a folder whose files changed under a run would mix its held-out images into training.
    Datasets whose splits are given (lists, sub-folders, fixed layouts) record nothing."""
    split = getattr(dataset, "split_record", None)
    if split is None:
        return
    path = Path(run_dir) / SPLIT_RECORD
    record = {"dataset": dataset.name, "splits": split}
    if not path.exists():
        atomic_write_json(path, record)
        return
    try:
        before = loads_json(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataProblemError(problem(path, f"unreadable split record ({exc})")) from None
    if before != record:
        old = before.get("splits", {}) if isinstance(before, dict) else {}
        moved = sorted(
            stem
            for name, stems in split.items()
            for stem in set(stems) ^ set(old.get(name, []) if isinstance(old, dict) else [])
        )
        shown = ", ".join(moved[:3]) + (", ..." if len(moved) > 3 else "")
        raise DataProblemError(
            problem(
                path,
                f"the data folder changed since this run started ({len(set(moved))} samples added, removed "
                f"or moved: {shown}); restore it, or start a new run",
            )
        )
