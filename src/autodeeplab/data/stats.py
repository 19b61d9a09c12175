"""What a dataset holds (``autodeeplab data stats``): per split, the samples, image sizes, and per class the
fraction of labelled pixels and the number of images it appears in; classes never seen; the ignored fraction.

Read through the same readers as training, so a class mapping (``values:``, ``ignore:``) shows here exactly as
the network will see it. Samples that cannot be read are counted and left out (``data check`` names them).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from autodeeplab.data.labels import IGNORE_INDEX
from autodeeplab.data.problems import DataProblemError
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

    def fractions(self) -> list[float]:
        """Each class's share of the labelled (not ignored) pixels."""
        labelled = sum(self.pixels)
        return [p / labelled if labelled else 0.0 for p in self.pixels]


@dataclass
class DatasetStats:
    dataset: str
    root: str | None
    class_names: list[str]
    splits: dict[str, SplitStats] = field(default_factory=dict)

    def never_seen(self) -> list[str]:
        """Classes with no pixel in any split."""
        return [
            name
            for c, name in enumerate(self.class_names)
            if not any(split.pixels[c] for split in self.splits.values())
        ]

    def to_json(self) -> dict[str, Any]:
        splits = {}
        for name, split in self.splits.items():
            splits[name] = {
                **asdict(split),
                "ignored_fraction": split.ignored_pixels / max(split.total_pixels, 1),
                "class_fractions": dict(zip(self.class_names, split.fractions(), strict=True)),
            }
        return {
            "format": STATS_FORMAT,
            "version": 1,
            "dataset": self.dataset,
            "root": self.root,
            "class_names": self.class_names,
            "never_seen": self.never_seen(),
            "splits": splits,
        }


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
    stats: DatasetStats | None = None
    for split in chosen:
        data = build_dataset(name, root, split, strict=False, **options)
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
    return stats


def format_stats(stats: DatasetStats) -> str:
    """The table on screen: one block per split, one row per class."""
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
