"""Budgets in the search: the multiply-add budget of an Auto-DeepLab search (``budget`` settings).

:func:`build_mac_tables` counts the parts of the found network that the search will produce (the settings of
``budget.network`` at ``budget.image_size``) on their own modules, so that the space's expected multiply-adds
(:mod:`autodeeplab.space.autodeeplab.budget`) are in the units of ``autodeeplab info``; DiNTS's memory budget
is the space's own setting (``dints.memory_budget``).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

import torch

from autodeeplab.config.checks import dotted, positive
from autodeeplab.errors import ConfigError
from autodeeplab.nets.complexity import multiply_adds_by_module
from autodeeplab.nets.network import AutoDeepLabNet, NetworkConfig
from autodeeplab.ops.primitives import PRIMITIVES, build_op, strided_size
from autodeeplab.space.autodeeplab.budget import MacTables
from autodeeplab.space.autodeeplab.genotype import Genotype
from autodeeplab.space.autodeeplab.supernet import SearchSpaceConfig


def _budget_network_defaults() -> NetworkConfig:
    return NetworkConfig(num_classes=None, in_channels=None)


@dataclass
class BudgetConfig:
    """A multiply-add target for the decoded Auto-DeepLab network (off by default: the paper has none)."""

    multiply_adds: float | None = None
    """Target multiply-adds of the decoded network, in billions, counted as ``autodeeplab info`` counts them
    for ``network`` at ``image_size``; the architecture step adds ``weight · |E[MACs] / target - 1|``."""
    weight: float = 1.0
    image_size: tuple[int, int] | None = None
    """(H, W) the target is counted at (e.g. [360, 480] for CamVid); required with ``multiply_adds``."""
    network: NetworkConfig = field(default_factory=_budget_network_defaults)
    """The found network's settings the target refers to (``filter_multiplier`` of the retraining, heads);
    ``num_classes`` / ``in_channels`` null: the data's."""
    decode_within_budget: bool = True
    """Decode the most probable path whose found network fits the target (a Viterbi over
    ``log β - λ · MACs``, :mod:`autodeeplab.space.autodeeplab.budget_decode`); False: the plain decode."""

    def __post_init__(self) -> None:
        if self.image_size is not None:
            self.image_size = tuple(self.image_size)

    def validate(self, where: str = "budget") -> None:
        if self.multiply_adds is None:
            return
        positive(dotted(where, "multiply_adds"), self.multiply_adds)
        positive(dotted(where, "weight"), self.weight)
        size = self.image_size
        if size is None or len(size) != 2 or not all(isinstance(n, int) and n >= 1 for n in size):
            raise ConfigError(
                f"{dotted(where, 'image_size')}: must be [H, W] with budget.multiply_adds (the input the "
                f"target is counted at, e.g. [360, 480] for CamVid), got {list(size) if size else size}"
            )
        self.network.validate(dotted(where, "network"))
        if self.network.spatial_dims != 2:
            raise ConfigError(f"{dotted(where, 'network.spatial_dims')}: the budget counts 2D networks")


def build_mac_tables(
    space: SearchSpaceConfig, network: NetworkConfig, image_size: tuple[int, int], classes: int, channels: int
) -> MacTables:
    """The multiply-adds of each part of the found network of ``space``'s shape (its blocks, layers and
    levels) built with ``network``'s settings for ``classes`` classes on ``[1, channels, *image_size]``."""
    for key, value in (("num_classes", classes), ("in_channels", channels)):
        given = getattr(network, key)
        if given is not None and given != value:
            raise ConfigError(f"budget.network.{key}: {given}, but the data has {value} (null: the data's)")
    net = dataclasses.replace(network, num_classes=classes, in_channels=channels, drop_path_keep_prob=1.0)
    f, blocks, levels, layers = net.filter_multiplier, space.num_blocks, space.num_levels, space.num_layers
    stem_size = strided_size(strided_size(tuple(image_size), 2), 2)  # two stride-2 convs
    sizes = [stem_size]
    for _ in range(1, levels):
        sizes.append(strided_size(sizes[-1], 2))
    area = [math.prod(s) for s in sizes]
    # Ops: each primitive alone, at its level (strided: on the cell input one level up).
    op = torch.zeros(levels, 2, len(PRIMITIVES), dtype=torch.float64)
    for c in range(levels):
        width = f * 2**c
        for p, name in enumerate(PRIMITIVES):
            plain = build_op(name, width, stride=1, affine=True)
            op[c, 0, p] = _total(plain, (1, width, *sizes[c]))
            strided = build_op(name, width, stride=2, affine=True) if c else plain
            op[c, 1, p] = _total(strided, (1, width, *sizes[max(c - 1, 0)]))
    # Preprocessing: 1×1 convs from the previous cells' widths, at the cell input's size.
    pre = torch.zeros(layers, levels, levels, levels, dtype=torch.float64)
    stem1, stem2 = net.stem_channels[1], net.stem_channels[2]
    for i in range(layers):
        for a in range(levels):
            for b in range(levels):
                for c in range(levels):
                    out = f * 2**c
                    c_prev = stem2 if i == 0 else blocks * f * 2**b
                    c_prev_prev = stem1 if i == 0 else stem2 if i == 1 else blocks * f * 2**a
                    size = area[min(b, c)]
                    pre[i, a, b, c] = (c_prev + (c_prev_prev if c_prev_prev != out else 0)) * out * size
    # Stem, ASPP per last level, decoder by its low-level source: counted on small whole networks.
    cell = tuple((("skip_connect", 0), ("skip_connect", 1)) for _ in range(blocks))
    aspp = torch.zeros(levels, dtype=torch.float64)
    stem = decoder_cell = decoder_stem = 0.0
    for last in range(levels):
        counts = _parts(Genotype(tuple(range(last + 1)) if last else (0,), cell), net, image_size)
        aspp[last] = counts["aspp"]
        stem, decoder_cell = counts["stem"], decoder_cell or counts["decoder"]
    decoder_stem = _parts(Genotype((1,), cell), net, image_size)["decoder"]
    return MacTables(stem, op, pre, aspp, torch.tensor([decoder_stem, decoder_cell], dtype=torch.float64))


def _total(module: torch.nn.Module, shape: tuple[int, ...]) -> float:
    return float(sum(multiply_adds_by_module(module, shape).values()))


def _parts(genotype: Genotype, network: NetworkConfig, image_size: tuple[int, int]) -> dict[str, float]:
    """Multiply-adds of a built network's stem, ASPP and decoder stages."""
    model = AutoDeepLabNet(genotype, network)
    counts = multiply_adds_by_module(model, (1, network.in_channels, *image_size))
    parts = {"stem": 0.0, "aspp": 0.0, "decoder": 0.0}
    for name, macs in counts.items():
        head = name.split(".")[0]
        key = "decoder" if head in ("decoder", "fine_decoder", "full_decoder") else head
        if key in parts:
            parts[key] += macs
    return parts
