"""What a dataset holds (``autodeeplab data stats``): per split, the samples, image sizes, and per class the
fraction of labelled pixels and the number of images it appears in; classes never seen; the ignored fraction.

Read through the same readers as training, so a class mapping (``values:``, ``ignore:``) shows here exactly as
the network will see it. Samples that cannot be read are counted and left out (``data check`` names them).

Volume datasets (``spatial_dims == 3``) get :class:`VolumeSplitStats` instead: voxels rather than pixels, the
range of shapes and voxel spacings, the stored label values with their voxel counts. Only their label volumes
are read (each once, :func:`~autodeeplab.data.nifti.label_summary`); ``data check`` reads the images too.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from autodeeplab.data.labels import IGNORE_INDEX
from autodeeplab.data.problems import DataProblemError, problem, refuse_problems
from autodeeplab.data.registry import build_dataset, dataset_class

STATS_FORMAT = "autodeeplab-data-stats"


@dataclass
class SplitStats:
    """One split: ``pixels[c]`` labelled pixels of class c, ``images[c]`` images where it appears."""

    samples: int
    unreadable: int
    sizes: dict[str, list[int]]
    """``{"min": [H, W], "median": [H, W], "max": [H, W]}`` over the readable images (heights and widths
    taken separately)."""
    pixels: list[int]
    images: list[int]
    ignored_pixels: int

    @property
    def total_pixels(self) -> int:
        return sum(self.pixels) + self.ignored_pixels

    def class_counts(self) -> list[int]:
        return self.pixels

    def ignored_fraction(self) -> float:
        return self.ignored_pixels / max(self.total_pixels, 1)

    def fractions(self) -> list[float]:
        """Each class's share of the labelled (not ignored) pixels."""
        labelled = sum(self.pixels)
        return [p / labelled if labelled else 0.0 for p in self.pixels]


@dataclass
class VolumeSplitStats:
    """One split of a volume dataset: ``voxels[c]`` voxels of class c, ``volumes_per_class[c]`` volumes that
    hold it."""

    volumes: int
    unreadable: int
    """Volumes whose label file cannot be read or holds values outside the class set (``data check``)."""
    shapes: dict[str, list[int]]
    """``{"min": [D, H, W], "max": [D, H, W]}`` over the readable volumes, each axis taken separately."""
    spacing: dict[str, list[float]]
    """``{"min": [..], "max": [..]}`` voxel sizes (mm) per axis, from the label files' headers."""
    voxels: list[int]
    volumes_per_class: list[int]
    ignored_voxels: int
    label_values: dict[str, int]
    """Stored label value (as text, for JSON) → its voxels, before any mapping to classes."""

    @property
    def samples(self) -> int:
        """The volumes, under the name image splits use for their count."""
        return self.volumes

    @property
    def total_voxels(self) -> int:
        return sum(self.voxels) + self.ignored_voxels

    def class_counts(self) -> list[int]:
        return self.voxels

    def fractions(self) -> list[float]:
        """Each class's share of the labelled (not ignored) voxels."""
        labelled = sum(self.voxels)
        return [v / labelled if labelled else 0.0 for v in self.voxels]

    def ignored_fraction(self) -> float:
        return self.ignored_voxels / max(self.total_voxels, 1)

    def value_fractions(self) -> dict[str, float]:
        """Each stored label value's share of all voxels."""
        total = sum(self.label_values.values())
        return {value: count / max(total, 1) for value, count in self.label_values.items()}


@dataclass
class DatasetStats:
    dataset: str
    root: str | None
    class_names: list[str]
    splits: dict[str, SplitStats | VolumeSplitStats] = field(default_factory=dict)
    spatial_dims: int = 2

    @property
    def unit(self) -> str:
        return "voxels" if self.spatial_dims == 3 else "pixels"

    def never_seen(self) -> list[str]:
        """Classes with no pixel (voxel) in any split."""
        return [
            name
            for c, name in enumerate(self.class_names)
            if not any(split.class_counts()[c] for split in self.splits.values())
        ]

    def to_json(self) -> dict[str, Any]:
        splits = {}
        for name, split in self.splits.items():
            splits[name] = {
                **asdict(split),
                "ignored_fraction": split.ignored_fraction(),
                "class_fractions": dict(zip(self.class_names, split.fractions(), strict=True)),
            }
            if isinstance(split, VolumeSplitStats):
                splits[name]["label_value_fractions"] = split.value_fractions()
        found = {
            "format": STATS_FORMAT,
            "version": 1,
            "dataset": self.dataset,
            "root": self.root,
            "class_names": self.class_names,
            "never_seen": self.never_seen(),
            "splits": splits,
        }
        if self.spatial_dims == 3:
            found["spatial_dims"] = 3
        return found


def dataset_stats(
    name: str,
    root: str | Path | None,
    splits: Sequence[str] | None = None,
    progress: Callable[[str, int, int], None] | None = None,
    **options: Any,
) -> DatasetStats:
    """Count every split of dataset ``name`` (default: all it offers); ``options`` go to the reader."""
    reader = dataset_class(name)
    chosen = list(splits) if splits is not None else list(reader.available_splits(root))
    if getattr(reader, "spatial_dims", 2) == 3:
        return volume_dataset_stats(name, root, chosen, progress, **options)
    stats: DatasetStats | None = None
    problems: list = []  # the first split's with any: why nothing could be counted, if so
    for split in chosen:
        data = build_dataset(name, root, split, strict=False, **options)
        problems = problems or data.problems
        if stats is None:
            stats = DatasetStats(name, None if root is None else str(root), list(data.class_names))
        classes = len(stats.class_names)
        pixels = np.zeros(classes, dtype=np.int64)
        images = np.zeros(classes, dtype=np.int64)
        ignored, unreadable, heights, widths = 0, 0, [], []
        for index in range(len(data)):
            try:
                _, mask = data.load_raw(index)
            except DataProblemError:
                unreadable += 1
                continue
            counts = np.bincount(mask.ravel(), minlength=IGNORE_INDEX + 1)
            pixels += counts[:classes]
            images += counts[:classes] > 0
            ignored += int(counts[IGNORE_INDEX])
            heights.append(mask.shape[0])
            widths.append(mask.shape[1])
            if progress is not None:
                progress(split, index + 1, len(data))
        sizes = {}
        if heights:
            for key, pick in (("min", np.min), ("median", np.median), ("max", np.max)):
                sizes[key] = [int(pick(heights)), int(pick(widths))]
        stats.splits[split] = SplitStats(
            len(data), unreadable, sizes, pixels.tolist(), images.tolist(), ignored
        )
    assert stats is not None, "a dataset offers at least one split"
    refuse_nothing_counted(stats, problems, root)
    return stats


def volume_dataset_stats(
    name: str,
    root: str | Path | None,
    splits: Sequence[str],
    progress: Callable[[str, int, int], None] | None = None,
    **options: Any,
) -> DatasetStats:
    """:func:`dataset_stats` of a volume dataset, from its label volumes' summaries."""
    from autodeeplab.data.nifti import label_summary
    from autodeeplab.data.volume_checks import class_voxels

    stats: DatasetStats | None = None
    problems: list = []  # the first split's with any: why nothing could be counted, if so
    for split in splits:
        data = build_dataset(name, root, split, strict=False, **options)
        problems = problems or data.problems
        if not data.class_names:  # no classes to count: the reason is the answer
            found = data.class_problem or (data.problems[0] if data.problems else None)
            if found is not None:
                raise DataProblemError(found)
        if stats is None:
            stats = DatasetStats(
                name, None if root is None else str(root), list(data.class_names), spatial_dims=3
            )
        classes = len(stats.class_names)
        voxels = np.zeros(classes, dtype=np.int64)
        volumes_per_class = np.zeros(classes, dtype=np.int64)
        values: dict[int, int] = {}
        ignored, unreadable, shapes, spacings = 0, 0, [], []
        for index in range(len(data)):
            label_path = data.label_path(index)
            try:
                summary = label_summary(label_path)
                counts = class_voxels(data.label_map, summary, label_path)
            except DataProblemError:
                unreadable += 1
                continue
            voxels += counts[:classes]
            volumes_per_class += counts[:classes] > 0
            ignored += int(counts[IGNORE_INDEX])
            for value, count in zip(summary.values.tolist(), summary.counts.tolist(), strict=True):
                values[value] = values.get(value, 0) + count
            shapes.append(summary.shape)
            spacings.append(summary.spacing)
            if progress is not None:
                progress(split, index + 1, len(data))
        ranges: dict[str, list[int]] = {}
        spacing: dict[str, list[float]] = {}
        if shapes:
            ranges = {"min": np.min(shapes, axis=0).tolist(), "max": np.max(shapes, axis=0).tolist()}
            spacing = {"min": np.min(spacings, axis=0).tolist(), "max": np.max(spacings, axis=0).tolist()}
        stats.splits[split] = VolumeSplitStats(
            len(data),
            unreadable,
            ranges,
            spacing,
            voxels.tolist(),
            volumes_per_class.tolist(),
            ignored,
            {str(v): values[v] for v in sorted(values)},
        )
    assert stats is not None, "a dataset offers at least one split"
    refuse_nothing_counted(stats, problems, root)
    return stats


def refuse_nothing_counted(stats: DatasetStats, problems: list, root: str | Path | None) -> None:
    """Refuse, with its first problem (no classes file, no pairs, no root...), a dataset of which no split
    has a sample: its tables would be empty, and the reason is the answer."""
    if not any(split.samples for split in stats.splits.values()):
        refuse_problems(problems or [problem(str(root), "no samples in any split")])


def _axes(values: Sequence[float]) -> str:
    return "x".join(f"{v:g}" for v in values)


def format_volume_stats(stats: DatasetStats) -> str:
    """:func:`format_stats` for volumes: shapes and spacings as ranges, stored values with their shares."""
    lines = []
    width = max(len(name) for name in stats.class_names)
    for name, split in stats.splits.items():
        assert isinstance(split, VolumeSplitStats)
        unreadable = f", {split.unreadable} unreadable (see 'data check')" if split.unreadable else ""
        if split.shapes:
            shapes = f"min {_axes(split.shapes['min'])}, max {_axes(split.shapes['max'])}"
            spacing = f"min {_axes(split.spacing['min'])}, max {_axes(split.spacing['max'])}"
            sizes = f"shapes (DxHxW) {shapes}; spacing (mm) {spacing}"
        else:
            sizes = "none readable"
        ignored = 100 * split.ignored_fraction()
        lines.append(f"{name}: {split.volumes} volumes{unreadable}; {sizes}; ignored {ignored:.1f}%")
        lines.append(f"  {'class':<{width}}  voxels %  volumes")
        for c, (cls, fraction) in enumerate(zip(stats.class_names, split.fractions(), strict=True)):
            lines.append(f"  {cls:<{width}}  {100 * fraction:8.2f}  {split.volumes_per_class[c]:7d}")
        shown = ", ".join(f"{v} {100 * f:.2f}%" for v, f in split.value_fractions().items())
        lines.append(f"  stored label values (share of all voxels): {shown or 'none'}")
    never = stats.never_seen()
    lines.append(f"classes never seen: {', '.join(never)}" if never else "every class is seen")
    return "\n".join(lines)


def format_stats(stats: DatasetStats) -> str:
    """The table on screen: one block per split, one row per class."""
    if stats.spatial_dims == 3:
        return format_volume_stats(stats)
    lines = []
    width = max(len(name) for name in stats.class_names)
    for name, split in stats.splits.items():
        sizes = split.sizes
        shown = ", ".join(f"{key} {h}x{w}" for key, (h, w) in sizes.items()) if sizes else "none readable"
        unreadable = f", {split.unreadable} unreadable (see 'data check')" if split.unreadable else ""
        ignored = 100 * split.ignored_pixels / max(split.total_pixels, 1)
        lines.append(
            f"{name}: {split.samples} samples{unreadable}; sizes (HxW) {shown}; ignored {ignored:.1f}%"
        )
        lines.append(f"  {'class':<{width}}  pixels %  images")
        for c, (cls, fraction) in enumerate(zip(stats.class_names, split.fractions(), strict=True)):
            lines.append(f"  {cls:<{width}}  {100 * fraction:8.2f}  {split.images[c]:6d}")
    never = stats.never_seen()
    lines.append(f"classes never seen: {', '.join(never)}" if never else "every class is seen")
    return "\n".join(lines)
