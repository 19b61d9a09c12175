"""Deterministic, resumable batch order for the training loops.

The order of an epoch is a pure function of ``(seed, stream, epoch)``, so a run that is killed and
resumed can skip exactly the batches it already consumed and see the same batches afterwards —
the basis of exact resume. Augmentation randomness is likewise a function of (seed, epoch, sample)
inside the datasets, so no loader state needs saving beyond these counters.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler


def split_halves(num_samples: int, seed: int) -> tuple[list[int], list[int]]:
    """Disjoint random halves (trainA, trainB) of ``range(num_samples)``, seeded (paper §4.2).

    With an odd count trainA gets the extra sample. Both halves are sorted for readable files.
    """
    if num_samples < 2:
        raise ValueError(f"need at least 2 training samples to split into trainA/trainB, got {num_samples}")
    order = np.random.default_rng(seed).permutation(num_samples)
    half = (num_samples + 1) // 2
    return sorted(int(i) for i in order[:half]), sorted(int(i) for i in order[half:])


def epoch_order(indices: Sequence[int], seed: int, stream: int, epoch: int) -> list[int]:
    """A permutation of ``indices`` that depends only on ``(seed, stream, epoch)``."""
    rng = np.random.default_rng([seed, stream, epoch])
    return [int(indices[i]) for i in rng.permutation(len(indices))]


class ListSampler(Sampler[int]):
    """Yields a fixed list of dataset indices (one epoch's order, possibly with a prefix skipped)."""

    def __init__(self, order: Sequence[int]) -> None:
        self.order = list(order)

    def __iter__(self) -> Iterator[int]:
        return iter(self.order)

    def __len__(self) -> int:
        return len(self.order)


def batches_per_epoch(num_samples: int, batch_size: int) -> int:
    """Full batches per epoch (the last incomplete batch is dropped: BN needs equal batches)."""
    return num_samples // batch_size


def epoch_loader(
    dataset: Dataset,
    indices: Sequence[int],
    batch_size: int,
    seed: int,
    stream: int,
    epoch: int,
    start_batch: int = 0,
    num_workers: int = 0,
    shard: tuple[int, int] = (0, 1),
) -> DataLoader:
    """Loader over ``indices`` in the order of ``(seed, stream, epoch)``, starting at ``start_batch``.

    Calls ``dataset.set_epoch(epoch)`` first when the dataset has it, so augmentation follows the
    epoch too (workers copy the dataset when the iterator starts, after this call). ``shard`` ``(rank,
    world)``: ``batch_size`` is the global batch and this rank loads its ``batch_size / world`` samples of
    each (:func:`~autodeeplab.runs.distributed.rank_order`).
    """
    from autodeeplab.runs.distributed import rank_order

    if hasattr(dataset, "set_epoch"):
        dataset.set_epoch(epoch)
    order = epoch_order(indices, seed, stream, epoch)
    usable = batches_per_epoch(len(order), batch_size) * batch_size
    order = order[:usable]
    rank, world = shard
    if world > 1:
        order, batch_size = rank_order(order, batch_size, rank, world), batch_size // world
    order = order[start_batch * batch_size :]
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=ListSampler(order),
        num_workers=num_workers,
        drop_last=True,
        persistent_workers=False,
    )


@dataclass
class CyclePosition:
    """Where an endless stream stands: its pass over the data and the batch within that pass."""

    cycle: int = 0
    batch: int = 0


class CyclingLoader:
    """An endless stream of batches over ``indices`` that is created once and resumable.

    Used for trainB in the search: each architecture step takes the next batch; a new pass with a new
    order starts only when the current one is exhausted (never a fresh iterator per step).
    """

    def __init__(
        self,
        dataset: Dataset,
        indices: Sequence[int],
        batch_size: int,
        seed: int,
        stream: int,
        num_workers: int = 0,
        position: CyclePosition | None = None,
        shard: tuple[int, int] = (0, 1),
    ) -> None:
        if batches_per_epoch(len(indices), batch_size) == 0:
            raise ValueError(f"{len(indices)} samples cannot fill one batch of {batch_size}")
        self.dataset, self.indices, self.batch_size = dataset, list(indices), batch_size
        self.seed, self.stream, self.num_workers = seed, stream, num_workers
        self.position = position or CyclePosition()
        self.shard = shard
        self._iterator: Iterator | None = None

    def next(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The next batch; advances :attr:`position`."""
        per_cycle = batches_per_epoch(len(self.indices), self.batch_size)
        if self.position.batch >= per_cycle:
            self.position = CyclePosition(self.position.cycle + 1, 0)
            self._iterator = None
        if self._iterator is None:
            loader = epoch_loader(
                self.dataset,
                self.indices,
                self.batch_size,
                self.seed,
                self.stream,
                self.position.cycle,
                self.position.batch,
                self.num_workers,
                self.shard,
            )
            self._iterator = iter(loader)
        batch = next(self._iterator)
        self.position = CyclePosition(self.position.cycle, self.position.batch + 1)
        return batch
