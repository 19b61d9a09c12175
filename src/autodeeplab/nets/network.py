"""The found network (paper §5.2, Fig. 3): a genotype turned into a segmentation model.

Structure (following Google's released ``hnasnet``, ``deeplab/core/nas_network.py`` / ``nas_cell.py``):

- Stem: 3×3 conv 64 stride 2 → BN → ReLU → 3×3 conv 64 → BN → ReLU → 3×3 conv 128 stride 2 → BN.
  The stem output (output stride 4) is h^{0}; the second conv's BN output (output stride 2) is h^{-1}.
- One :class:`FixedCell` per layer along ``genotype.network_path``; the cell at level ``s`` has
  ``F·2^s`` filters per block and concatenates its blocks to ``B·F·2^s`` channels (B = 5 blocks).
  A cell one level down runs the ops that read the cell inputs with stride 2 (a strided atrous op
  resizes to half size and then convolves without dilation, as the released model does; see
  :class:`autodeeplab.ops.primitives.AtrousConv`); a cell one level up first upsamples its input
  bilinearly to the level's size. ReLU after the last cell.
- Head (:mod:`autodeeplab.ops.heads`): ASPP on the last cell, DeepLabv3+ decoder with the output of
  layer 3 (output stride 4) as low-level features, bilinear upsampling of the logits to the input.

Spatial sizes: level 0 has the stem's size ``S0 = ceil(ceil(S/2)/2)`` and level ``s+1`` has
``ceil(S_s / 2)`` (what every stride-2 op of the package produces). Going up a level resizes to the
stored size of that level, so any input size works (the paper uses 321, 513, 769), not only
multiples of 32; for odd sizes this is TensorFlow's ``(n-1)·2+1`` upsampling, for even sizes ×2.

Scheduled drop path (released model): the cell at index ``i`` of ``L`` keeps each op output with
probability ``1 - (i+1)/L · (1 - keep_prob)``, and that drop rate grows linearly with training progress
(:meth:`AutoDeepLabNet.set_drop_path_progress`). One Bernoulli draw per sample and op, outputs
rescaled by ``1/keep``; training mode only. Like the released model (whose ``none`` op is the
identity), identity skips are never dropped.
"""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from autodeeplab.errors import ConfigError, GenotypeError
from autodeeplab.ops.heads import ASPP, DeepLabV3PlusDecoder, aspp_rates_for_stride
from autodeeplab.ops.primitives import ReLUConvBN, build_op, resize
from autodeeplab.space.autodeeplab.genotype import Genotype, resolve_genotype

VARIANTS: dict[str, int] = {"S": 20, "M": 32, "L": 48}
"""Auto-DeepLab-S/M/L filter multipliers F (paper Table 2)."""

STEM_OUTPUT_STRIDE = 4
"""The stem's output stride: level ``s`` has output stride ``4 · 2^s``."""

LOW_LEVEL_LAYER = 3
"""1-based layer whose output feeds the decoder (the released model's ``Cell_2``, output stride 4)."""


@dataclass
class NetworkConfig:
    """Settings of the found network besides the genotype (JSON-able through :meth:`to_dict`).

    ``drop_path_keep_prob`` defaults to 1.0 (no drop path), the released model's default
    (``nas_network.config`` and ``train.py --drop_path_keep_prob``); training presets may lower it.
    ``aspp_rates_os16`` are the ASPP atrous rates at output stride 16; they are scaled by ``16 / OS``
    for the genotype's final output stride OS (DeepLab: (6, 12, 18) at 16, (12, 24, 36) at 8).
    """

    filter_multiplier: int = 20
    num_classes: int = 19
    in_channels: int = 3
    stem_channels: tuple[int, int, int] = (64, 64, 128)
    aspp_channels: int = 256
    aspp_rates_os16: tuple[int, int, int] = (6, 12, 18)
    aspp_dropout: float = 0.1
    decoder_channels: int = 256
    low_level_channels: int = 48
    drop_path_keep_prob: float = 1.0

    def __post_init__(self) -> None:
        # Validate here too so that settings built in code fail as clearly as settings read from files.
        for f in dataclasses.fields(self):
            setattr(self, f.name, _check_field(f.name, getattr(self, f.name), f"network.{f.name}"))

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON types (tuples become lists)."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}

    @classmethod
    def from_dict(cls, data: Any, source: str = "network") -> NetworkConfig:
        """Validate a parsed settings object; missing keys take their defaults, errors name the field."""
        if not isinstance(data, dict):
            raise ConfigError(f"{source}: expected an object of network settings, got {type(data).__name__}")
        known = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(data) - set(known))
        if unknown:
            raise ConfigError(f"{source}.{unknown[0]}: unknown network setting (known: {', '.join(known)})")
        return cls(**{name: _check_field(name, value, f"{source}.{name}") for name, value in data.items()})


_TUPLE_LENGTHS = {"stem_channels": 3, "aspp_rates_os16": 3}
# Probability-valued settings: (accepts the value, how to say what is accepted).
_PROBABILITIES = {
    "aspp_dropout": (lambda p: 0.0 <= p < 1.0, "in [0, 1)"),
    "drop_path_keep_prob": (lambda p: 0.0 < p <= 1.0, "in (0, 1]"),
}


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _check_field(name: str, value: Any, where: str) -> Any:
    """The validated value of setting ``name`` (``where`` names it in errors)."""
    if name in _TUPLE_LENGTHS:
        n = _TUPLE_LENGTHS[name]
        if (
            not isinstance(value, (list, tuple))
            or len(value) != n
            or not all(_is_int(v) and v > 0 for v in value)
        ):
            raise ConfigError(f"{where}: expected a list of {n} positive integers, got {value!r}")
        return tuple(value)
    if name in _PROBABILITIES:
        accepts, wording = _PROBABILITIES[name]
        is_number = isinstance(value, (int, float)) and not isinstance(value, bool)
        if not is_number or not accepts(value):
            raise ConfigError(f"{where}: expected a number {wording}, got {value!r}")
        return float(value)
    if not _is_int(value) or value <= 0:
        raise ConfigError(f"{where}: expected a positive integer, got {value!r}")
    return value


def scheduled_keep_prob(keep_prob: float, cell_index: int, num_cells: int, progress: float) -> float:
    """Keep probability of cell ``cell_index`` (0-based, of ``num_cells``) at training ``progress`` in [0, 1].

    Deeper cells drop more: ``k_i = 1 - (i+1)/L · (1 - keep_prob)``; the drop rate ramps up linearly
    from 0 at the start of training: ``1 - progress · (1 - k_i)``.
    """
    cell_keep = 1.0 - (cell_index + 1) / num_cells * (1.0 - keep_prob)
    return 1.0 - min(max(progress, 0.0), 1.0) * (1.0 - cell_keep)


def drop_path(x: torch.Tensor, keep_prob: float) -> torch.Tensor:
    """Zero whole samples of ``x`` ``[N, C, H, W]`` with probability ``1 - keep_prob``, rescale the rest."""
    if keep_prob >= 1.0:
        return x
    mask_shape = (x.shape[0],) + (1,) * (x.dim() - 1)
    mask = torch.rand(mask_shape, dtype=x.dtype, device=x.device) < keep_prob
    return x * mask.to(x.dtype) / keep_prob


class FixedCell(nn.Module):
    """One cell of the found network: ``(h^{l-2}, h^{l-1})`` → ``[N, B·filters, *S_out]``.

    ``h^{l-1}`` (``[N, c_prev, *S]``, already upsampled when the cell goes up a level) goes through
    ReLU → 1×1 → BN; ``h^{l-2}`` (``[N, c_prev_prev, *S']``) is resized to ``S`` and gets
    ReLU → 1×1 → BN only when ``c_prev_prev != filters`` (released model). With ``reduction`` the ops
    that read the two cell inputs have stride 2 (``S_out = ceil(S/2)``), ops on block outputs stride 1.
    """

    def __init__(
        self,
        cell: tuple[tuple[tuple[str, int], tuple[str, int]], ...],
        c_prev_prev: int,
        c_prev: int,
        filters: int,
        reduction: bool,
        dims: int = 2,
    ) -> None:
        super().__init__()
        self.cell = cell
        self.pre_prev = ReLUConvBN(c_prev, filters, 1, dims=dims)
        self.pre_prev_prev = (
            ReLUConvBN(c_prev_prev, filters, 1, dims=dims) if c_prev_prev != filters else nn.Identity()
        )
        self.ops = nn.ModuleList()
        for block in cell:
            for op_name, source in block:
                stride = 2 if reduction and source < 2 else 1
                self.ops.append(build_op(op_name, filters, stride=stride, affine=True, dims=dims))
        self.out_channels = len(cell) * filters

    def forward(self, prev_prev: torch.Tensor, prev: torch.Tensor, keep_prob: float = 1.0) -> torch.Tensor:
        prev_prev = self.pre_prev_prev(resize(prev_prev, prev.shape[2:]))
        states = [prev_prev, self.pre_prev(prev)]
        ops = iter(self.ops)
        for block in self.cell:
            total: torch.Tensor | None = None
            for _, source in block:
                op = next(ops)
                out = op(states[source])
                if self.training and not isinstance(op, nn.Identity):
                    out = drop_path(out, keep_prob)
                total = out if total is None else total + out
            assert total is not None
            states.append(total)
        return torch.cat(states[2:], dim=1)


def conv_bn(c_in: int, c_out: int, kernel: int, stride: int = 1) -> list[nn.Module]:
    """Dense k×k conv (no bias: BN follows) → BN, as a list so the caller decides about the ReLU."""
    return [
        nn.Conv2d(c_in, c_out, kernel, stride=stride, padding=kernel // 2, bias=False),
        nn.BatchNorm2d(c_out),
    ]


class Stem(nn.Module):
    """``[N, C_in, H, W]`` → (h^{-1} ``[N, c1, ceil(H/2), ·]``, h^{0} ``[N, c2, ceil(ceil(H/2)/2), ·]``)."""

    def __init__(self, in_channels: int, channels: tuple[int, int, int]) -> None:
        super().__init__()
        c0, c1, c2 = channels
        self.conv0 = nn.Sequential(*conv_bn(in_channels, c0, 3, stride=2), nn.ReLU())
        self.conv1 = nn.Sequential(*conv_bn(c0, c1, 3))
        self.conv2 = nn.Sequential(nn.ReLU(), *conv_bn(c1, c2, 3, stride=2))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h_minus1 = self.conv1(self.conv0(x))
        return h_minus1, self.conv2(h_minus1)


def low_level_layer_index(network_path: tuple[int, ...]) -> int:
    """0-based index of the layer whose output feeds the decoder, or -1 for the stem output.

    Layer 3 when it is at level 0 (output stride 4, the paper's path); otherwise the last of the first
    three layers at level 0; if none is, the stem output (also output stride 4, like ``pnasnet``).
    """
    first = network_path[:LOW_LEVEL_LAYER]
    at_level0 = [i for i, level in enumerate(first) if level == 0]
    return at_level0[-1] if at_level0 else -1


class AutoDeepLabNet(nn.Module):
    """The found network: ``[N, in_channels, H, W]`` float → logits ``[N, num_classes, H, W]``."""

    def __init__(self, genotype: Genotype, config: NetworkConfig | None = None) -> None:
        super().__init__()
        config = config or NetworkConfig()
        self.genotype = genotype
        self.config = config
        self._progress = 0.0
        f = config.filter_multiplier
        self.stem = Stem(config.in_channels, config.stem_channels)
        # Channel counts of h^{l-2} and h^{l-1} as the cells are stacked.
        c_prev_prev, c_prev = config.stem_channels[1], config.stem_channels[2]
        previous_level = 0
        self.cells = nn.ModuleList()
        for level in genotype.network_path:
            filters = f * 2**level
            cell = FixedCell(genotype.cell, c_prev_prev, c_prev, filters, reduction=level > previous_level)
            self.cells.append(cell)
            c_prev_prev, c_prev, previous_level = c_prev, cell.out_channels, level
        self.low_level_index = low_level_layer_index(genotype.network_path)
        low_channels = (
            config.stem_channels[2]
            if self.low_level_index < 0
            else self.cells[self.low_level_index].out_channels
        )
        self.output_stride = STEM_OUTPUT_STRIDE * 2 ** genotype.network_path[-1]
        rates = aspp_rates_for_stride(config.aspp_rates_os16, self.output_stride)
        self.aspp = ASPP(c_prev, config.aspp_channels, rates, dropout=config.aspp_dropout)
        self.decoder = DeepLabV3PlusDecoder(
            low_channels,
            config.aspp_channels,
            config.low_level_channels,
            config.decoder_channels,
            config.num_classes,
        )
        self._init_weights()

    def _init_weights(self) -> None:
        # PyTorch's default conv init (uniform, bound sqrt(1 / fan_in)) is exactly the released model's
        # variance_scaling(factor=1/3, FAN_IN, uniform); slim initialises biases to zero.
        for m in self.modules():
            if isinstance(m, nn.Conv2d) and m.bias is not None:
                nn.init.zeros_(m.bias)

    def set_drop_path_progress(self, progress: float) -> None:
        """Training progress in [0, 1] (e.g. ``step / total_steps``) for scheduled drop path."""
        if not 0.0 <= progress <= 1.0:
            raise ValueError(f"drop path progress must be in [0, 1], got {progress}")
        self._progress = float(progress)

    def cell_keep_probs(self) -> list[float]:
        """The current keep probability of each cell (all 1.0 in eval mode)."""
        n = len(self.cells)
        if not self.training:
            return [1.0] * n
        keep = self.config.drop_path_keep_prob
        return [scheduled_keep_prob(keep, i, n, self._progress) for i in range(n)]

    def level_sizes(self, stem_size: tuple[int, ...]) -> list[tuple[int, ...]]:
        """Spatial size of each level given the stem output's size (level 0)."""
        sizes = [tuple(stem_size)]
        for _ in range(max(self.genotype.network_path)):
            sizes.append(tuple(math.ceil(s / 2) for s in sizes[-1]))
        return sizes

    def forward_features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``[N, C, H, W]`` → (last cell after ReLU, low-level features).

        The last cell's output is ``[N, B·F·2^s, ceil(H/OS), ceil(W/OS)]`` for its level ``s``; the
        low-level features are ``[N, c_low, H4, W4]`` at output stride 4.
        """
        prev_prev, prev = self.stem(x)
        sizes = self.level_sizes(tuple(prev.shape[2:]))
        low_level = prev
        previous_level = 0
        for i, (cell, level, keep) in enumerate(
            zip(self.cells, self.genotype.network_path, self.cell_keep_probs(), strict=True)
        ):
            cell_input = resize(prev, sizes[level]) if level < previous_level else prev
            out = cell(prev_prev, cell_input, keep)
            prev_prev, prev, previous_level = prev, out, level
            if i == self.low_level_index:
                low_level = out
        return torch.relu(prev), low_level

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[N, in_channels, H, W]`` → logits ``[N, num_classes, H, W]`` (any H, W)."""
        features, low_level = self.forward_features(x)
        logits = self.decoder(self.aspp(features), low_level)
        return resize(logits, x.shape[2:])

    def config_dict(self) -> dict[str, Any]:
        """JSON-able description from which :meth:`from_config_dict` rebuilds the same architecture."""
        return {"genotype": self.genotype.to_dict(), "network": self.config.to_dict()}

    @classmethod
    def from_config_dict(cls, data: Any, source: str = "config") -> AutoDeepLabNet:
        """Rebuild from :meth:`config_dict`'s output; a malformed dict raises an error naming the field."""
        if not isinstance(data, dict):
            raise ConfigError(
                f"{source}: expected an object with 'genotype' and 'network', got {type(data).__name__}"
            )
        for key in ("genotype", "network"):
            if key not in data:
                raise ConfigError(f"{source}: missing key {key!r}")
        unknown = sorted(set(data) - {"genotype", "network"})
        if unknown:
            raise ConfigError(f"{source}: unknown key {unknown[0]!r} (allowed: genotype, network)")
        genotype = Genotype.from_dict(data["genotype"], source=f"{source}.genotype")
        config = NetworkConfig.from_dict(data["network"], source=f"{source}.network")
        return cls(genotype, config)


def build_network(
    genotype: Genotype | str | os.PathLike[str] = "paper", variant: str | None = None, **settings: Any
) -> AutoDeepLabNet:
    """Build from a genotype (object, built-in name, ``genotype.json`` or run directory).

    ``variant`` ("S", "M", "L") sets the filter multiplier; ``settings`` are :class:`NetworkConfig`
    fields (validated like a config file's).
    """
    if isinstance(genotype, (str, os.PathLike)):
        genotype = resolve_genotype(genotype)
    if not isinstance(genotype, Genotype):
        raise GenotypeError(f"genotype: expected a Genotype or a name/path, got {type(genotype).__name__}")
    if variant is not None:
        if variant not in VARIANTS:
            raise ConfigError(f"variant: unknown variant {variant!r} (choose from {', '.join(VARIANTS)})")
        if "filter_multiplier" in settings and settings["filter_multiplier"] != VARIANTS[variant]:
            raise ConfigError(
                f"filter_multiplier: {settings['filter_multiplier']} contradicts variant {variant} "
                f"(F = {VARIANTS[variant]})"
            )
        settings = {**settings, "filter_multiplier": VARIANTS[variant]}
    config = NetworkConfig.from_dict(settings, source="network")
    return AutoDeepLabNet(genotype, config)


__all__ = [
    "VARIANTS",
    "AutoDeepLabNet",
    "FixedCell",
    "NetworkConfig",
    "build_network",
    "drop_path",
    "low_level_layer_index",
    "scheduled_keep_prob",
    "Stem",
]
