"""Scanning a whole dataset and reporting every problem at once (``autodeeplab data check``).

Every file is decoded in full (a truncated PNG only fails at its end), image and label sizes are compared, and
label values are checked against the class set. The messages are the very ones training raises lazily.
Volume datasets (``spatial_dims == 3``: NIfTI pairs) are checked by :mod:`autodeeplab.data.volume_checks`,
and their warnings speak of voxels.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from autodeeplab.data.labels import IGNORE_INDEX
from autodeeplab.data.problems import DataProblem, DataProblemError, problem, refuse_problems
from autodeeplab.data.registry import build_dataset, dataset_class

IGNORE_WARNING_FRACTION = 0.5
"""``data check`` warns when the ignore value covers more than this fraction of all pixels (voxels)."""


@dataclass
class CheckReport:
    """The outcome of a check: problems in the order found, and how many samples each split listed."""

    problems: list[DataProblem] = field(default_factory=list)
    samples: dict[str, int] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    distinct_samples: int = 0
    """Samples counted once however many splits list them (``all`` repeats ``train`` and ``val``)."""

    @property
    def ok(self) -> bool:
        return not self.problems


def check_dataset_report(
    name: str,
    root: str | Path | None,
    splits: Sequence[str] | None = None,
    progress: Callable[[str, int, int], None] | None = None,
    volume_options: dict | None = None,
) -> CheckReport:
    """Check ``splits`` (default: every split the dataset offers) of dataset ``name`` under ``root``.

    ``progress(split, done, total)`` is called after each sample, for long scans.
    Unknown dataset names or splits raise :class:`~autodeeplab.errors.ConfigError` (a wrong question, not a
    broken dataset).
    """
    reader = dataset_class(name)
    report = CheckReport()
    seen: set[DataProblem] = set()
    images: set[str] = set()
    pixels: dict[str, np.ndarray] = {}  # split -> pixel count per train id (255: ignored)
    last: Any = None

    def add(found: DataProblem) -> None:
        # VOC's trainval repeats train and val: report each broken file once.
        if found not in seen:
            seen.add(found)
            report.problems.append(found)

    if getattr(reader, "spatial_dims", 2) == 3:
        from autodeeplab.data.volume_checks import check_volume_dataset

        last, voxels = check_volume_dataset(name, root, splits, report, add, progress, volume_options or {})
        if last is not None and voxels:
            _check_label_balance(last, voxels, report, add)
        return report

    for split in splits if splits is not None else reader.available_splits(root):
        try:
            dataset = build_dataset(name, root, split, strict=False)
        except DataProblemError as exc:  # e.g. an unreadable classes file: nothing else can be checked
            add(exc.problem)
            report.samples[split] = 0
            continue
        for found in dataset.problems:
            add(found)
        report.warnings += [w for w in dataset.warnings if w not in report.warnings]
        report.samples[split] = len(dataset)
        counts = pixels.setdefault(split, np.zeros(IGNORE_INDEX + 1, dtype=np.int64))
        last = dataset
        for index in range(len(dataset)):
            images.add(str(dataset.image_path(index)))
            try:
                _, mask = dataset.load_raw(index)
                counts += np.bincount(mask.ravel(), minlength=IGNORE_INDEX + 1)[: IGNORE_INDEX + 1]
            except DataProblemError as exc:
                add(exc.problem)
            if progress is not None:
                progress(split, index + 1, len(dataset))
    report.distinct_samples = len(images)
    if last is not None and pixels:
        _check_label_balance(last, pixels, report, add)
    return report


def refuse_broken_images(
    dataset: Any, count: int | None = None, progress: Callable[[], None] | None = None
) -> None:
    """Read the first ``count`` samples (all: None) of an image split once before a run starts: the first
    problem (a label value outside the classes, an image and a label of different sizes, an unreadable
    file; with the count of the others) as a :class:`DataProblemError`. For the split a run evaluates on:
    met at its first evaluation instead, a broken file cost the epoch or the steps before it.
    ``progress`` is called after each sample."""
    found: list[DataProblem] = []
    for index in range(files_to_read(dataset, count)[0]):
        try:
            dataset.load_raw(index)
        except DataProblemError as exc:
            found.append(exc.problem)
        if progress is not None:
            progress()
    refuse_problems(found)


def refuse_broken_files(
    dataset: Any, count: int | None = None, progress: Callable[[], None] | None = None
) -> None:
    """Before a run's first step: every pair of a volume split
    (:func:`~autodeeplab.data.volume_checks.refuse_broken_volumes`), or the first ``count`` images (all:
    None; :func:`refuse_broken_images`). ``progress`` is called after each of :func:`files_to_read`."""
    from autodeeplab.data.volume_checks import is_volume_dataset, refuse_broken_volumes

    if is_volume_dataset(dataset):
        refuse_broken_volumes(dataset, progress)
    else:
        refuse_broken_images(dataset, count, progress)


def files_to_read(dataset: Any, count: int | None = None) -> tuple[int, str]:
    """``(how many, what)`` :func:`refuse_broken_files` reads, e.g. ``(101, "reading the val images")``."""
    from autodeeplab.data.volume_checks import is_volume_dataset

    if is_volume_dataset(dataset):
        return len(dataset.samples), f"reading the {dataset.split} volumes"
    total = len(dataset) if count is None else min(len(dataset), count)
    return total, f"reading the {dataset.split} images"


FIRST_MASKS = 8
"""Masks a search or training reads at its start for :func:`refuse_hidden_class`."""


def refuse_hidden_class(dataset: Any) -> None:
    """Refuse, at the start of a search or training, a two-class dataset whose ignore value hides one class
    (0/255 masks read with the default ``ignore: 255``), from its first few masks: the same problem
    ``data check`` reports for the whole dataset, so that no run trains with its foreground ignored."""
    if getattr(dataset, "classes", None) is None or len(dataset) == 0:
        return
    counts = np.zeros(IGNORE_INDEX + 1, dtype=np.int64)
    for index in range(min(len(dataset), FIRST_MASKS)):
        _, mask = dataset.load_raw(index)
        counts += np.bincount(mask.ravel(), minlength=IGNORE_INDEX + 1)[: IGNORE_INDEX + 1]
    found: list[DataProblem] = []
    _check_label_balance(dataset, {dataset.split: counts}, CheckReport(), found.append)
    if found:
        raise DataProblemError(found[0])


def _check_label_balance(dataset: Any, pixels: dict[str, np.ndarray], report: CheckReport, add) -> None:
    """Masks whose ignore value hides a class: the two-class 0/255 case is a problem (with the lines to
    write), an ignore value over half of the pixels and a class absent from ``train`` are warnings (voxels,
    for a volume dataset)."""
    unit = "voxels" if getattr(dataset, "spatial_dims", 2) == 3 else "pixels"
    total = sum(pixels.values())
    names = dataset.class_names
    ignored = total[IGNORE_INDEX] / max(int(total.sum()), 1)
    absent = [i for i in range(len(names)) if total[i] == 0]
    spec = getattr(dataset, "classes", None)  # a plain folder's classes file
    if spec is not None and len(names) == 2 and len(absent) == 1 and total[IGNORE_INDEX] and spec.ignore:
        stored = {i: v for v, i in sorted(spec.values.items(), reverse=True)}
        missing, kept = absent[0], 1 - absent[0]
        mapping = {stored[kept]: names[kept], spec.ignore[0]: names[missing]}
        written = ", ".join(f"{v}: {n}" for v, n in sorted(mapping.items()))
        add(
            problem(
                dataset.classes_file,
                f"class {names[missing]!r} has no {unit} while the ignore value {spec.ignore[0]} covers "
                f"{100 * ignored:.1f}% of them: if {spec.ignore[0]} marks {names[missing]!r} (a 0/255 "
                f"mask), write 'values: {{{written}}}' in this file",
            )
        )
    elif ignored > IGNORE_WARNING_FRACTION:
        report.warnings.append(
            f"the ignore value covers {100 * ignored:.1f}% of all {unit} (more than any class needs to be "
            "learnt from); check 'ignore' and 'values' in the classes file"
        )
    train = pixels.get("train")
    if train is not None and train[: len(names)].sum():
        unseen = [names[i] for i in range(len(names)) if train[i] == 0]
        if unseen:
            report.warnings.append(f"classes with no {unit} in train: {', '.join(unseen)}")


def check_dataset(
    name: str, root: str | Path | None, splits: Sequence[str] | None = None
) -> list[DataProblem]:
    """Every problem of dataset ``name`` under ``root`` (empty list: the dataset is fine). See
    :func:`check_dataset_report`."""
    return check_dataset_report(name, root, splits).problems
