"""``predict`` for volumes: NIfTI label volumes on the input's grid, and a picture of three slices.

Each input is read as in training (float32, z-scored per channel over its nonzero voxels, resampled to the
model's ``target_spacing`` when it was trained with one), segmented by sliding window over the model's
training patch, and written as ``NAME_label.nii.gz`` with the input's affine and header (viewers overlay it
exactly) plus ``NAME_slices.png``: the middle slice along each axis through the predicted foreground, with
the labels over the image. Every input is read before anything is written.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from autodeeplab.data.nifti import nifti_stem, read_image_volume, zscore_nonzero
from autodeeplab.data.volumes import resample
from autodeeplab.infer.volume_metrics import keep_largest_component
from autodeeplab.infer.volumes import sliding_window_probabilities, write_label_volume

LABEL_SUFFIX, SLICES_SUFFIX = "_label.nii.gz", "_slices.png"


def volume_output_names(paths: Sequence[str | os.PathLike[str]]) -> list[str]:
    """Distinct output stems: the file name without ``.nii.gz``/``.nii``, with ``_2``, ``_3`` on repeats."""
    seen: dict[str, int] = {}
    names = []
    for p in paths:
        stem = nifti_stem(Path(p)) or Path(p).stem
        seen[stem] = seen.get(stem, 0) + 1
        names.append(stem if seen[stem] == 1 else f"{stem}_{seen[stem]}")
    return names


def predict_volume(
    model: nn.Module,
    image: np.ndarray,
    spacing: Sequence[float],
    patch_size: Sequence[int],
    overlap: float,
    target_spacing: Sequence[float] | None = None,
    mirror: bool = False,
    largest_component: bool = False,
) -> np.ndarray:
    """Labels ``int64 [D, H, W]`` of a normalised image ``float32 [C, D, H, W]`` with voxel size ``spacing``.

    With ``target_spacing`` the image is resampled to it first and the class probabilities back to the
    input's grid (trilinear) before the argmax. ``mirror``: average the 8 mirrorings (test-time mirroring);
    ``largest_component``: keep each class's largest connected piece only.
    """
    x = torch.from_numpy(image)
    shape = tuple(image.shape[1:])
    if target_spacing is not None and tuple(spacing) != tuple(target_spacing):
        size = [max(1, round(n * s / t)) for n, s, t in zip(shape, spacing, target_spacing, strict=True)]
        x = resample(x, size, labels=False)
    was_training = model.training
    model.eval()
    try:
        probs = sliding_window_probabilities(model, x, patch_size, overlap, mirror=mirror)
    finally:
        model.train(was_training)
    if tuple(probs.shape[1:]) != shape:
        probs = resample(probs, shape, labels=False)
    labels = probs.argmax(dim=0).numpy()
    return keep_largest_component(labels) if largest_component else labels


def predict_volume_files(
    model: nn.Module,
    paths: Sequence[str | os.PathLike[str]],
    output_dir: str | os.PathLike[str],
    palette: Sequence[Sequence[int]],
    patch_size: Sequence[int],
    overlap: float,
    in_channels: int = 1,
    target_spacing: Sequence[float] | None = None,
    alpha: float = 0.5,
    mirror: bool = False,
    largest_component: bool = False,
) -> list[tuple[Path, Path]]:
    """Segment every volume of ``paths`` into ``output_dir``; ``(label .nii.gz, slices .png)`` per input.
    ``mirror`` and ``largest_component``: as :func:`predict_volume`."""
    from autodeeplab.viz.volumes import plot_orthogonal_slices

    # All read before anything is written; a 4th axis is channels, so that a 4D image given to a
    # one-channel model is told it has too many channels rather than pointed at a dataset layout.
    volumes = [read_image_volume(p, channels=True) for p in paths]
    for path, volume in zip(paths, volumes, strict=True):
        if volume.data.shape[0] != in_channels:
            from autodeeplab.data.problems import DataProblemError, problem

            found = volume.data.shape[0]
            raise DataProblemError(problem(path, f"{found} channels, but the model takes {in_channels}"))
    out = Path(output_dir)
    written = []
    for path, volume, name in zip(paths, volumes, volume_output_names(paths), strict=True):
        image = zscore_nonzero(volume.data)
        labels = predict_volume(
            model, image, volume.spacing, patch_size, overlap, target_spacing, mirror, largest_component
        )
        label_path = write_label_volume(labels, path, out / f"{name}{LABEL_SUFFIX}")
        slices = plot_orthogonal_slices(
            image[0],
            labels,
            palette,
            name,
            out / f"{name}{SLICES_SUFFIX}",
            spacing=volume.spacing,
            alpha=alpha,
        )
        written.append((label_path, slices))
    return written
