"""``autodeeplab data check`` for volume datasets (``nifti``, ``msd``): every problem of every pair at once.

Each pair is read once, however many splits list it (``all`` repeats ``train``, ``val`` and ``test``), and its
label volume once in all (:func:`~autodeeplab.data.nifti.label_summary` also serves the naming of classes
from the label values). A pair is checked for everything independently: an unreadable image does not hide
its label's stray values. The messages are the very ones training meets lazily
(:meth:`~autodeeplab.data.volumes.VolumeDataset.load_volume`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from autodeeplab.data.labels import IGNORE_INDEX, LabelMap
from autodeeplab.data.nifti import LabelSummary, check_pair, label_summary
from autodeeplab.data.problems import DataProblem, DataProblemError, refuse_problems
from autodeeplab.data.registry import build_dataset, dataset_class

PairResult = tuple[list[DataProblem], np.ndarray | None]
"""The problems of one pair, and its voxels per train id (None when its labels could not be counted)."""


def is_volume_dataset(name_or_dataset: Any) -> bool:
    """Whether a dataset (a name, a reader class or an opened dataset) holds volumes rather than images."""
    reader = dataset_class(name_or_dataset) if isinstance(name_or_dataset, str) else name_or_dataset
    return getattr(reader, "spatial_dims", 2) == 3


def class_voxels(label_map: LabelMap, summary: LabelSummary, path: Path) -> np.ndarray:
    """Voxels per train id (``[IGNORE_INDEX + 1]``, the last one ignored) of a label volume's summary; stored
    values outside the class set raise the problem :meth:`LabelMap.apply` raises on the whole volume."""
    train_ids = label_map.apply(summary.values, path)
    counts = np.zeros(IGNORE_INDEX + 1, dtype=np.int64)
    np.add.at(counts, train_ids.astype(np.int64), summary.counts)
    return counts


def check_pair_files(dataset: Any, image_path: Path, label_path: Path) -> PairResult:
    """Every problem of one image/label pair: either file unreadable (truncated, not NIfTI, 4D, non-finite,
    wrong channels), different grids (shape, affine), label values outside the class set."""
    found: list[DataProblem] = []
    image = label = counts = None
    try:
        image = dataset.read_image(image_path)
    except DataProblemError as exc:
        found.append(exc.problem)
    try:
        label = label_summary(label_path)
    except DataProblemError as exc:
        found.append(exc.problem)
    if image is not None and label is not None:
        try:
            check_pair(image, label, image_path, label_path)
        except DataProblemError as exc:
            found.append(exc.problem)
    if label is not None and dataset.class_problem is None and dataset.class_names:
        try:
            counts = class_voxels(dataset.label_map, label, label_path)
        except DataProblemError as exc:
            found.append(exc.problem)
    return found, counts


def check_volume_dataset(
    name: str,
    root: str | Path | None,
    splits: Sequence[str] | None,
    report: Any,
    add: Callable[[DataProblem], None],
    progress: Callable[[str, int, int], None] | None = None,
    options: dict[str, Any] | None = None,
) -> tuple[Any, dict[str, np.ndarray]]:
    """Fill ``report`` (a :class:`~autodeeplab.data.checks.CheckReport`) for the volume dataset ``name``;
    return the last dataset opened and the voxels per train id of each split, for the balance warnings."""
    reader = dataset_class(name)
    results: dict[tuple[Path, Path], PairResult] = {}
    voxels: dict[str, np.ndarray] = {}
    last: Any = None
    for split in splits if splits is not None else reader.available_splits(root):
        try:
            dataset = build_dataset(name, root, split, strict=False, **(options or {}))
        except DataProblemError as exc:  # e.g. an unreadable classes file
            add(exc.problem)
            report.samples[split] = 0
            continue
        for found in dataset.problems:
            add(found)
        report.warnings += [w for w in dataset.warnings if w not in report.warnings]
        report.samples[split] = len(dataset)
        counts = voxels.setdefault(split, np.zeros(IGNORE_INDEX + 1, dtype=np.int64))
        if dataset.class_problem is None and dataset.class_names:
            last = dataset
        for index, pair in enumerate(dataset.samples):
            if pair not in results:
                results[pair] = check_pair_files(dataset, *pair)
            problems, pair_counts = results[pair]
            for found in problems:
                add(found)
            if pair_counts is not None:
                counts += pair_counts
            if progress is not None:
                progress(split, index + 1, len(dataset))
    report.distinct_samples = len(results)
    return last, voxels


def refuse_broken_volumes(dataset: Any, progress: Callable[[], None] | None = None) -> None:
    """Read every pair of a volume split once before a run starts: the first problem (with the count of the
    others) as a :class:`DataProblemError`, so that a broken volume stops the run before it writes anything,
    not when the training first reaches it (a volume is small next to a training step: about 4 s for the
    260 hippocampus pairs; minutes for large multi-modal sets). ``progress`` is called after each pair."""
    found: list[DataProblem] = []
    for image_path, label_path in dataset.samples:
        found += check_pair_files(dataset, image_path, label_path)[0]
        if progress is not None:
            progress()
    refuse_problems(found)
