"""The search spaces the loop can search, by ``SearchConfig.search_space``: how each supernet is built from
the settings and the data (its classes and channels)."""

from __future__ import annotations

from collections.abc import Callable

from autodeeplab.fast.supernet import build_supernet
from autodeeplab.search.budgets import build_mac_tables
from autodeeplab.search.config import SearchConfig
from autodeeplab.space.contract import SearchSpace
from autodeeplab.space.dints.network import DintsShape
from autodeeplab.space.dints.supernet import DintsSupernet

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
    return model


def build_dints_space(config: SearchConfig, num_classes: int, in_channels: int = 3) -> SearchSpace:
    """DiNTS's supernet (``config.dints``) in ``space.spatial_dims`` dimensions, its memory counted on the
    search's training patch (volumes) or crop (images)."""
    d, dims = config.dints, config.space.spatial_dims
    shape = DintsShape(d.depths, d.blocks, d.channels, dims, d.norm, in_channels, num_classes)
    probe = config.data.volumes.patch_size if dims == 3 else (config.data.crop_size,) * dims
    return DintsSupernet(shape, d.memory_budget, d.topology_weight, tuple(probe), recompute=d.recompute)


BUILDERS: dict[str, SpaceBuilder] = {"autodeeplab": build_autodeeplab_space, "dints": build_dints_space}


def space_builder(config: SearchConfig) -> SpaceBuilder:
    """The builder of ``config.search_space`` (validated by the settings)."""
    return BUILDERS[config.search_space]
