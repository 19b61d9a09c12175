"""Epoch bookkeeping through dataset wrappers (Subset, ConcatDataset).

The trainA/trainB split of the search is made once for every dataset by
:func:`autodeeplab.runs.sampling.split_halves` (indices, written to the run directory).
"""

from __future__ import annotations

from torch.utils.data import ConcatDataset, Dataset, Subset

from autodeeplab.data.base import SegmentationDataset


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
