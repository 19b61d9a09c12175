"""The search spaces the loop can search, by ``SearchConfig.search_space``: how each supernet is built from
the settings and the data (its classes and channels)."""

from __future__ import annotations

from collections.abc import Callable

import torch

from autodeeplab.fast.memory import SavedTensorCounter
from autodeeplab.fast.supernet import build_supernet
from autodeeplab.search.budgets import build_mac_tables
from autodeeplab.search.config import SearchConfig
from autodeeplab.space.contract import SearchSpace
from autodeeplab.space.dints.arch import OP_SETS
from autodeeplab.space.dints.cells import build_dints_op
from autodeeplab.space.dints.network import DintsShape
from autodeeplab.space.dints.supernet import OP_MEMORY, DintsSupernet

SpaceBuilder = Callable[[SearchConfig, int, int], SearchSpace]
"""``(config, num_classes, in_channels) → supernet``: how :func:`~autodeeplab.search.loop.run_search` makes
the search space it searches (``in_channels``: the data's, 3 for RGB images, the modalities of volumes)."""


def build_autodeeplab_space(config: SearchConfig, num_classes: int, in_channels: int = 3) -> SearchSpace:
    """Auto-DeepLab's supernet (``config.space``), run as ``config.execution`` says; with
    ``budget.multiply_adds``, its budget term counted for ``budget.network`` at ``budget.image_size``."""
    model = build_supernet(config.space, num_classes, in_channels=in_channels, execution=config.execution)
    b = config.budget
    if b.multiply_adds is not None:
        tables = build_mac_tables(config.space, b.network, b.image_size, num_classes, in_channels)
        model.set_multiply_add_budget(tables, b.multiply_adds * 1e9, b.weight)
        model.decode_within_budget = b.decode_within_budget
    return model


def build_dints_space(config: SearchConfig, num_classes: int, in_channels: int = 3) -> SearchSpace:
    """DiNTS's supernet (``config.dints``) in ``space.spatial_dims`` dimensions, its memory counted on the
    search's training patch (volumes) or crop (images)."""
    d, dims = config.dints, config.space.spatial_dims
    shape = DintsShape(d.depths, d.blocks, d.channels, dims, d.norm, in_channels, num_classes)
    probe = config.data.volumes.patch_size if dims == 3 else (config.data.crop_size,) * dims
    op_memory = measured_op_memory(OP_SETS[f"{d.op_set}-{dims}d"], dims)
    return DintsSupernet(
        shape,
        d.memory_budget,
        d.topology_weight,
        tuple(probe),
        recompute=d.recompute,
        op_set=d.op_set,
        op_memory=op_memory,
        decode_within_budget=d.decode_within_budget,
    )


def measured_op_memory(ops: tuple[str, ...], dims: int, channels: int = 4, side: int = 8) -> dict[str, float]:
    """What each op without a hand-made memory factor keeps for its backward, in units of its output:
    counted with the saved-tensor hooks on one training-mode forward of ``[2, channels, side^dims]``."""
    units = {}
    for name in ops:
        if name in OP_MEMORY:
            continue
        op = build_dints_op(name, channels, dims).train()
        x = torch.randn(2, channels, *(side,) * dims, requires_grad=True)
        counter = SavedTensorCounter(exclude=[x, *op.parameters(), *op.buffers()])
        with counter:
            y = op(x)
        units[name] = sum(r.nbytes for r in counter.records) / (4 * y.numel())
    return units


BUILDERS: dict[str, SpaceBuilder] = {"autodeeplab": build_autodeeplab_space, "dints": build_dints_space}


def space_builder(config: SearchConfig) -> SpaceBuilder:
    """The builder of ``config.search_space`` (validated by the settings)."""
    return BUILDERS[config.search_space]
