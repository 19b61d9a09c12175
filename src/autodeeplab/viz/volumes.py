"""A 3D volume at a glance: three orthogonal slices through its labelled structures, labels overlaid."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from autodeeplab.viz.common import new_figure, save_png

AXIS_NAMES = ("axis 0 (D)", "axis 1 (H)", "axis 2 (W)")
OVERLAY_ALPHA = 0.5


def slice_centre(labels: np.ndarray | None, shape: Sequence[int]) -> tuple[int, int, int]:
    """The voxel nearest the centre of mass of the foreground (labels > 0), or the volume's centre when
    there is none, so that the three slices cut through what was segmented."""
    if labels is not None and (labels > 0).any():
        coords = np.nonzero(labels > 0)
        return tuple(int(round(float(c.mean()))) for c in coords)  # type: ignore[return-value]
    return tuple(int(s) // 2 for s in shape)  # type: ignore[return-value]


def _grey_range(image: np.ndarray) -> tuple[float, float]:
    """The 1st and 99th percentiles: CT's -1024 air and a few bright voxels do not wash the slices out."""
    finite = image[np.isfinite(image)]
    if not finite.size:
        return 0.0, 1.0
    low, high = (float(v) for v in np.percentile(finite, [1, 99]))
    return (low, high) if high > low else (low, low + 1.0)


def _overlay(
    labels: np.ndarray, palette: Sequence[Sequence[int]], alpha: float = OVERLAY_ALPHA
) -> np.ndarray:
    """RGBA ``[h, w, 4]`` in 0..1: each class in its palette colour, class 0 (and labels without a colour,
    such as an ignore value) fully transparent."""
    colours = np.zeros((len(palette), 4))
    if len(palette):
        colours[:, :3] = np.asarray([tuple(c)[:3] for c in palette], dtype=np.float64) / 255.0
    colours[1:, 3] = alpha
    rgba = np.zeros((*labels.shape, 4))
    known = (labels >= 0) & (labels < len(palette))
    rgba[known] = colours[labels[known]]
    return rgba


def orthogonal_slices(
    image: np.ndarray,
    labels: np.ndarray | None,
    palette: Sequence[Sequence[int]],
    title: str | None = None,
    *,
    spacing: Sequence[float] | None = None,
    alpha: float = OVERLAY_ALPHA,
) -> Figure:
    """Three panels: the slices across axes 0, 1 and 2 of ``image`` ``[D, H, W]`` (grey) through the centre
    of mass of the foreground ``labels`` ``[D, H, W]`` (overlaid in ``palette``'s RGB 0..255 colours; None
    draws the image alone). ``spacing`` (voxel size along D, H, W) gives the panels their physical aspect;
    without it voxels are drawn square."""
    image = np.asarray(image, dtype=np.float64)
    if image.ndim != 3:
        raise ValueError(f"image must be a volume [D, H, W], got shape {image.shape}")
    if labels is not None:
        labels = np.asarray(labels).astype(np.int64)
        if labels.shape != image.shape:
            raise ValueError(f"labels {labels.shape} do not match image {image.shape}")
    sizes = tuple(float(s) for s in spacing) if spacing is not None else (1.0, 1.0, 1.0)
    centre = slice_centre(labels, image.shape)
    low, high = _grey_range(image)
    fig = new_figure((10.5, 3.8))
    for axis in range(3):
        ax = fig.add_subplot(1, 3, axis + 1)
        index = [slice(None)] * 3
        index[axis] = centre[axis]  # type: ignore[call-overload]
        rows, cols = [a for a in range(3) if a != axis]
        # aspect = height of one row / width of one column, so anisotropic voxels keep their true shape
        aspect = sizes[rows] / sizes[cols]
        ax.imshow(
            image[tuple(index)], cmap="gray", vmin=low, vmax=high, aspect=aspect, interpolation="nearest"
        )
        if labels is not None:
            ax.imshow(_overlay(labels[tuple(index)], palette, alpha), aspect=aspect, interpolation="nearest")
        ax.set_title(f"{AXIS_NAMES[axis]} = {centre[axis]}", fontsize=9)
        ax.set_axis_off()
    if title:
        fig.suptitle(title, fontsize=10)
    return fig


def plot_orthogonal_slices(
    image: np.ndarray,
    labels: np.ndarray | None,
    palette: Sequence[Sequence[int]],
    title: str | None,
    out_png: str | os.PathLike[str],
    *,
    spacing: Sequence[float] | None = None,
    alpha: float = OVERLAY_ALPHA,
) -> Path:
    """:func:`orthogonal_slices` written to ``out_png`` (atomically); ``alpha``: the labels' opacity."""
    return save_png(orthogonal_slices(image, labels, palette, title, spacing=spacing, alpha=alpha), out_png)
