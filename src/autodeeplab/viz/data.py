"""The picture of ``autodeeplab data stats``: each class's share of the labelled pixels (voxels, for volumes),
one bar per split."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from autodeeplab.viz.common import new_figure, save_png


def plot_class_fractions(
    title: str,
    names: Sequence[str],
    fractions: Mapping[str, Sequence[float]],
    out_png: str | os.PathLike[str],
    unit: str = "pixels",
) -> Path:
    """Grouped bars: classes along x, one bar per split of ``fractions`` (split -> each class's share of
    the split's labelled pixels, 0..1; ``unit`` "voxels" for volumes)."""
    splits = list(fractions)
    fig = new_figure((max(4.0, 0.55 * len(names) * max(len(splits), 1) ** 0.5 + 1.5), 3.6))
    ax = fig.add_subplot(1, 1, 1)
    x = np.arange(len(names))
    width = 0.8 / max(len(splits), 1)
    for k, split in enumerate(splits):
        values = [100 * f for f in fractions[split]]
        ax.bar(x + (k - (len(splits) - 1) / 2) * width, values, width, label=split)
    ax.set_xticks(x)
    ax.set_xticklabels(
        names, rotation=45 if len(names) > 6 else 0, ha="right" if len(names) > 6 else "center"
    )
    ax.set_ylabel(f"% of labelled {unit}")
    ax.set_title(f"{title}: class balance", fontsize=10)
    ax.grid(axis="y", alpha=0.3)
    if splits:
        ax.legend(fontsize=7, frameon=False)
    return save_png(fig, out_png)
