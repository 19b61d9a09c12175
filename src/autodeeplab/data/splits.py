"""Splitting a training set into the two halves of the bilevel search, and epoch bookkeeping for wrappers.

The paper (§4.1) trains network weights on one half of the training images (trainA) and architecture
parameters on the other (trainB). :func:`search_split` does this the same way for every dataset: a permutation
drawn from ``seed`` cut at ``fraction``.
"""

from __future__ import annotations

import numpy as np
from torch.utils.data import ConcatDataset, Dataset, Subset

from ..errors import ConfigError
from .base import SegmentationDataset


def search_split(dataset: Dataset, fraction: float = 0.5, seed: int = 0) -> tuple[Subset, Subset]:
    """Two disjoint subsets (trainA, trainB) covering ``dataset``; trainA holds ``round(fraction * len)``."""
    if not 0.0 < fraction < 1.0:
        raise ConfigError(f"search_split_fraction: must be strictly between 0 and 1, got {fraction!r}")
    size = len(dataset)  # type: ignore[arg-type]
    first = round(fraction * size)
    if first < 1 or first > size - 1:
        raise ConfigError(f"search_split_fraction: {size} samples cannot be split in two non-empty parts")
    order = np.random.default_rng([seed, size]).permutation(size)
    return Subset(dataset, np.sort(order[:first]).tolist()), Subset(dataset, np.sort(order[first:]).tolist())


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
