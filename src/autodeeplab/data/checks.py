"""Scanning a whole dataset and reporting every problem at once (``autodeeplab data check``).

Every file is decoded in full (a truncated PNG only fails at its end), image and label sizes are compared, and
label values are checked against the class set. The messages are the very ones training raises lazily.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from autodeeplab.data.problems import DataProblem, DataProblemError
from autodeeplab.data.registry import build_dataset, dataset_class


@dataclass
class CheckReport:
    """The outcome of a check: problems in the order found, and how many samples each split listed."""

    problems: list[DataProblem] = field(default_factory=list)
    samples: dict[str, int] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.problems


def check_dataset_report(
    name: str,
    root: str | Path | None,
    splits: Sequence[str] | None = None,
    progress: Callable[[str, int, int], None] | None = None,
) -> CheckReport:
    """Check ``splits`` (default: every split the dataset offers) of dataset ``name`` under ``root``.

    ``progress(split, done, total)`` is called after each sample, for long scans.
    Unknown dataset names or splits raise :class:`~autodeeplab.errors.ConfigError` (a wrong question, not a
    broken dataset).
    """
    reader = dataset_class(name)
    report = CheckReport()
    seen: set[DataProblem] = set()

    def add(found: DataProblem) -> None:
        # VOC's trainval repeats train and val: report each broken file once.
        if found not in seen:
            seen.add(found)
            report.problems.append(found)

    for split in splits if splits is not None else reader.available_splits(root):
        try:
            dataset = build_dataset(name, root, split, strict=False)
        except DataProblemError as exc:  # e.g. an unreadable classes file: nothing else can be checked
            add(exc.problem)
            report.samples[split] = 0
            continue
        for found in dataset.problems:
            add(found)
        report.samples[split] = len(dataset)
        for index in range(len(dataset)):
            try:
                dataset.load_raw(index)
            except DataProblemError as exc:
                add(exc.problem)
            if progress is not None:
                progress(split, index + 1, len(dataset))
    return report


def check_dataset(
    name: str, root: str | Path | None, splits: Sequence[str] | None = None
) -> list[DataProblem]:
    """Every problem of dataset ``name`` under ``root`` (empty list: the dataset is fine). See
    :func:`check_dataset_report`."""
    return check_dataset_report(name, root, splits).problems
