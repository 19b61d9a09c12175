"""Training transforms of volumes: a random patch, biased towards foreground, and random flips.

Written here rather than taken from MONAI (``RandCropByPosNegLabeld``) so that every draw comes from the
sample's own generator (``(seed, epoch, index)``, see :class:`~autodeeplab.data.base.SegmentationDataset`):
a patch is then the same whatever the number of loader workers, and a resumed run sees exactly the patches an
uninterrupted one would have seen.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from autodeeplab.data.labels import IGNORE_INDEX


def pad_to(image: np.ndarray, mask: np.ndarray, size: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """Pad ``[C, *S]`` / ``[*S]`` symmetrically to at least ``size``: image with 0 (the z-scored background's
    value is about the mean, but 0 is what nnU-Net pads with), mask with the ignore label, so that padding
    is not learned as background."""
    pads = [max(0, t - s) for s, t in zip(mask.shape, size, strict=True)]
    if not any(pads):
        return image, mask
    widths = [(p // 2, p - p // 2) for p in pads]
    image = np.pad(image, [(0, 0), *widths])
    mask = np.pad(mask, widths, constant_values=IGNORE_INDEX)
    return image, mask


class PatchTransform:
    """``(image [C, D, H, W], mask [D, H, W], rng)`` → a ``patch_size`` patch of both, as tensors.

    With probability ``foreground_prob`` the patch is centred (up to the volume's border) on a voxel drawn
    uniformly from the foreground (mask values 1..K-1); otherwise its corner is uniform. Each axis is then
    flipped with probability 1/2 when ``flip``. Volumes smaller than the patch are padded first
    (:func:`pad_to`).
    """

    def __init__(self, patch_size: Sequence[int], foreground_prob: float = 0.33, flip: bool = True) -> None:
        self.patch_size = tuple(int(p) for p in patch_size)
        self.foreground_prob = float(foreground_prob)
        self.flip = flip

    def corner(self, mask: np.ndarray, rng: np.random.Generator) -> list[int]:
        """The patch's first voxel along each axis."""
        spare = [s - p for s, p in zip(mask.shape, self.patch_size, strict=True)]
        if rng.random() < self.foreground_prob:
            foreground = np.flatnonzero((mask > 0) & (mask != IGNORE_INDEX))
            if foreground.size:
                centre = np.unravel_index(foreground[rng.integers(foreground.size)], mask.shape)
                return [
                    int(np.clip(c - p // 2, 0, m))
                    for c, p, m in zip(centre, self.patch_size, spare, strict=True)
                ]
        return [int(rng.integers(m + 1)) for m in spare]

    def __call__(
        self, image: np.ndarray, mask: np.ndarray, rng: np.random.Generator
    ) -> tuple[torch.Tensor, torch.Tensor]:
        image, mask = pad_to(image, mask, self.patch_size)
        start = self.corner(mask, rng)
        window = tuple(slice(s, s + p) for s, p in zip(start, self.patch_size, strict=True))
        image, mask = image[(slice(None), *window)], mask[window]
        if self.flip:
            for axis in range(mask.ndim):
                if rng.random() < 0.5:
                    image, mask = np.flip(image, axis + 1), np.flip(mask, axis)
        return torch.from_numpy(np.ascontiguousarray(image)), torch.from_numpy(np.ascontiguousarray(mask))


class CentrePatchTransform:
    """``(image [C, D, H, W], mask [D, H, W], rng)`` → the centred ``patch_size`` window of both (padded as
    :func:`pad_to` where the volume is smaller): the search's cheap validation, one forward per volume."""

    def __init__(self, patch_size: Sequence[int]) -> None:
        self.patch_size = tuple(int(p) for p in patch_size)

    def __call__(
        self, image: np.ndarray, mask: np.ndarray, rng: np.random.Generator
    ) -> tuple[torch.Tensor, torch.Tensor]:
        image, mask = pad_to(image, mask, self.patch_size)
        start = [(s - p) // 2 for s, p in zip(mask.shape, self.patch_size, strict=True)]
        window = tuple(slice(s, s + p) for s, p in zip(start, self.patch_size, strict=True))
        image, mask = image[(slice(None), *window)], mask[window]
        return torch.from_numpy(np.ascontiguousarray(image)), torch.from_numpy(np.ascontiguousarray(mask))
