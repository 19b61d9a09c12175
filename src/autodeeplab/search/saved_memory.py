"""The activations a search step keeps for its backward: counted at one crop, scaled to another.

Counted exactly with :class:`autodeeplab.fast.memory.SavedTensorCounter` over one forward of the real
supernet (same F, L, B, batch, precision, execution switches and frozen parameter group as the step), then
each saved tensor is scaled to the target crop by the ratio of the areas of its resolution: activations are
linear in the pixels of their own resolution, so only the ceil() of odd sizes is extrapolated
(:mod:`autodeeplab.search.estimate` uses this for ``search --estimate``).
"""

from __future__ import annotations

import torch
from torch import nn

from autodeeplab.fast.execution import Precision
from autodeeplab.fast.memory import SavedRecord, SavedTensorCounter
from autodeeplab.fast.precision import autocast
from autodeeplab.search.loop import frozen
from autodeeplab.space.autodeeplab.supernet import SearchNetwork


def resolution_chain(size: int, count: int = 8) -> list[int]:
    """Side of each resolution for an input side ``size``: input, then every stride-2 step (ceil)."""
    chain = [size]
    for _ in range(count - 1):
        chain.append((chain[-1] + 1) // 2)
    return chain


def scale_saved_bytes(records: list[SavedRecord], calibration: int, target: int) -> int:
    """Bytes the ``records`` counted at crop ``calibration`` would take at crop ``target``."""
    source, goal = resolution_chain(calibration), resolution_chain(target)
    ratio = {side: (goal[k] / side) ** 2 for k, side in enumerate(source) if side > 1}
    total = 0.0
    for record in records:
        side = _square_side(record.shape, ratio)
        total += record.nbytes * (ratio[side] if side else 1.0)
    return int(round(total))


def _square_side(shape: tuple[int, ...], sides: dict[int, float]) -> int | None:
    """The spatial side of a saved tensor's owner: its last two dims (``[N, C, H, W]``) or, for an owner
    made as channels-last rows (``[N, H, W, C]``), the two before the channels. Owners of more than four
    dims are either rows of channel groups (``[N, H, W, G, C]``, ``[N, H, W, G, E, C]``: the two after the
    batch) or batch groups (``[G, N, C, H, W]``: the last two); when both pairs could be sides (tiny F and
    batch), the larger is taken."""
    if len(shape) >= 5:
        found = [h for h, w in (shape[1:3], shape[-2:]) if h == w and h in sides]
        return max(found) if found else None
    pairs = [shape[-2:], shape[-3:-1]] if len(shape) >= 3 else [shape[-2:]] if len(shape) == 2 else []
    for h, w in pairs:
        if h == w and h in sides:
            return h
    return None


def count_saved(
    model: SearchNetwork,
    images: torch.Tensor,
    masks: torch.Tensor,
    criterion: nn.Module,
    step: str,
    precision: Precision = "fp32",
) -> list[SavedRecord]:
    """Storages kept for the backward of a ``step`` (``weight`` or ``arch``) on ``images`` ``[N, 3, H, W]``.

    Runs the forward and the loss as the step does (same frozen parameters, same ``precision``), no
    backward.
    """
    model.train()
    still = model.arch_parameters() if step == "weight" else list(model.weight_parameters())
    counter = SavedTensorCounter(exclude=[*model.parameters(), *model.buffers()])
    with frozen(still), counter, autocast(precision, images.device.type):
        criterion(model(images), masks)
    return counter.records
