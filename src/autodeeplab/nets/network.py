"""The found network (paper §5.2, Fig. 3): a genotype turned into a segmentation model.

Structure (following Google's released ``hnasnet``, ``deeplab/core/nas_network.py`` / ``nas_cell.py``):

- Stem, then one :class:`~autodeeplab.nets.cell.FixedCell` per layer along ``genotype.network_path``
  (:mod:`autodeeplab.nets.cell`); the cell at level ``s`` has ``F·2^s`` filters per block and
  concatenates its blocks to ``B·F·2^s`` channels (B = 5 blocks). A cell one level down runs the ops
  that read the cell inputs with stride 2 (a strided atrous op resizes to half size and then convolves
  without dilation, as the released model does; see :class:`autodeeplab.ops.primitives.AtrousConv`);
  a cell one level up first upsamples its input to the level's size. ReLU after the last cell.
- Head (:mod:`autodeeplab.ops.heads`): ASPP on the last cell, DeepLabv3+ decoder with the output of
  layer 3 (output stride 4) as low-level features, upsampling of the logits to the input.

Every resize aligns corners (:data:`autodeeplab.ops.primitives.ALIGN_CORNERS`), as the released model's
``resize_bilinear`` does: h^{l-2} to the cell's size, the upward cell input, the ASPP output in the
decoder and the logits. ``NetworkConfig.spatial_dims`` selects images (2: ``[N, C, H, W]``, bilinear)
or volumes (3: ``[N, C, D, H, W]``, trilinear); every module takes it, like the primitives.

Spatial sizes: level 0 has the stem's size ``S0 = ceil(ceil(S/2)/2)`` and level ``s+1`` has
``ceil(S_s / 2)`` (what every stride-2 op of the package produces). Going up a level resizes to the
stored size of that level, so any input size works (the paper uses 321, 513, 769), not only
multiples of 32; for odd sizes this is TensorFlow's ``(n-1)·2+1`` upsampling, for even sizes ×2.

Scheduled drop path (:func:`autodeeplab.nets.cell.scheduled_keep_prob`) follows training progress
through :meth:`AutoDeepLabNet.set_drop_path_progress`.
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
from autodeeplab.nets.cell import FixedCell, Stem, scheduled_keep_prob
from autodeeplab.ops.depthwise import cheap_depthwise_backward
from autodeeplab.ops.heads import (
    ASPP,
    DeepLabV3PlusDecoder,
    FineDecoderStage,
    FullResolutionStage,
    aspp_rates_for_stride,
)
from autodeeplab.ops.primitives import ALIGN_CORNERS, resize
from autodeeplab.space.autodeeplab.genotype import Genotype, resolve_genotype

VARIANTS: dict[str, int] = {"S": 20, "M": 32, "L": 48}
"""Auto-DeepLab-S/M/L filter multipliers F (paper Table 2)."""

STEM_OUTPUT_STRIDE = 4
"""The stem's output stride: level ``s`` has output stride ``4 · 2^s``."""

LOW_LEVEL_LAYER = 3
"""1-based layer whose output feeds the decoder (the released model's ``Cell_2``, output stride 4)."""


@dataclass
class NetworkConfig:
    """Settings of the found network besides the genotype: the ``network`` record of ``model.pt`` and the
    ``model`` section of the training settings (so every field can be set from YAML or ``--set``).

    ``num_classes`` and ``in_channels`` may be ``None`` only in training settings, where they mean "the
    dataset's count"; a network is always built with numbers. ``spatial_dims`` is 2 for images, 3 for volumes.
    ``drop_path_keep_prob`` defaults to 1.0 (no drop path), the released model's default
    (``nas_network.config`` and ``train.py --drop_path_keep_prob``); training presets may lower it.
    ``aspp_rates_os16`` are the ASPP atrous rates at output stride 16; they are scaled by ``16 / OS``
    for the genotype's final output stride OS (DeepLab: (6, 12, 18) at 16, (12, 24, 36) at 8).

    Values are checked by :meth:`validate` (called by :class:`AutoDeepLabNet`, :meth:`from_dict` and
    the training settings' own ``validate``), which names the field in a :class:`ConfigError`.
    """

    filter_multiplier: int = 20
    num_classes: int | None = 19
    in_channels: int | None = 3
    spatial_dims: int = 2
    stem_channels: tuple[int, int, int] = (64, 64, 128)
    aspp_channels: int = 256
    aspp_rates_os16: tuple[int, int, int] = (6, 12, 18)
    aspp_dropout: float = 0.1
    decoder_channels: int = 256
    low_level_channels: int = 48
    drop_path_keep_prob: float = 1.0
    fine_skip_channels: int = 0
    """0 (the paper): the decoder ends at output stride 4. More: a second decoder stage at output stride 2
    fed by the stem's stride-2 features reduced to this many channels (:class:`FineDecoderStage`), for
    inputs whose structures are a few voxels thick (e.g. 1 mm hippocampus volumes, where upsampling
    stride-4 logits caps Dice near 0.78: benchmarks/hippocampus_result.md)."""
    full_skip_channels: int = 0
    """0: the logits are made at output stride 2 (with ``fine_skip_channels``) or 4. More (needs
    ``fine_skip_channels``): one more stage at the input's resolution, this many channels wide, fed by a
    3×3(×3) convolution of the input (:class:`FullResolutionStage`; not in the paper)."""

    def __post_init__(self) -> None:
        # Normalise only (lists from JSON/YAML become tuples, int probabilities floats); the checks are in
        # validate(), because a section of another config cannot know the name it is read under.
        for name in _TUPLE_LENGTHS:
            value = getattr(self, name)
            if isinstance(value, list):
                setattr(self, name, tuple(value))
        for name in _PROBABILITIES:
            value = getattr(self, name)
            if isinstance(value, int) and not isinstance(value, bool):
                setattr(self, name, float(value))

    def validate(self, where: str = "network") -> None:
        """Raise :class:`ConfigError` naming ``{where}.{field}`` for the first value that cannot work."""
        for f in dataclasses.fields(self):
            _check_field(f.name, getattr(self, f.name), f"{where}.{f.name}")
        if self.full_skip_channels and not self.fine_skip_channels:
            raise ConfigError(
                f"{where}.full_skip_channels: {self.full_skip_channels} needs the stride-2 stage too "
                f"(set {where}.fine_skip_channels as well)"
            )

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
        config = cls(**data)
        config.validate(source)
        return config


_TUPLE_LENGTHS = {"stem_channels": 3, "aspp_rates_os16": 3}
# Probability-valued settings: (accepts the value, how to say what is accepted).
_PROBABILITIES = {
    "aspp_dropout": (lambda p: 0.0 <= p < 1.0, "in [0, 1)"),
    "drop_path_keep_prob": (lambda p: 0.0 < p <= 1.0, "in (0, 1]"),
}
SPATIAL_DIMS = (2, 3)
"""Images and volumes (the primitives also build 1D ops, but nothing else of the package is 1D)."""


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _check_field(name: str, value: Any, where: str) -> None:
    """Raise :class:`ConfigError` (naming ``where``) when ``value`` does not fit setting ``name``."""
    if name in _TUPLE_LENGTHS:
        n = _TUPLE_LENGTHS[name]
        if not isinstance(value, tuple) or len(value) != n or not all(_is_int(v) and v > 0 for v in value):
            shown = list(value) if isinstance(value, tuple) else value
            raise ConfigError(f"{where}: must be a list of {n} positive integers, got {shown!r}")
    elif name in _PROBABILITIES:
        accepts, wording = _PROBABILITIES[name]
        is_number = isinstance(value, (int, float)) and not isinstance(value, bool)
        if not is_number or not accepts(value):
            raise ConfigError(f"{where}: must be a number {wording}, got {value!r}")
    elif name == "spatial_dims":
        if value not in SPATIAL_DIMS or not _is_int(value):
            raise ConfigError(f"{where}: must be 2 (images) or 3 (volumes), got {value!r}")
    elif name in ("fine_skip_channels", "full_skip_channels") and _is_int(value) and value == 0:
        return  # off
    elif name in ("num_classes", "in_channels") and value is None:
        return  # training settings: the dataset's count
    elif not _is_int(value):
        raise ConfigError(f"{where}: must be an integer, got {value!r}")
    elif value < 1:
        raise ConfigError(f"{where}: must be at least 1, got {value}")


def low_level_layer_index(network_path: tuple[int, ...]) -> int:
    """0-based index of the layer whose output feeds the decoder, or -1 for the stem output.

    Layer 3 when it is at level 0 (output stride 4, the paper's path); otherwise the last of the first
    three layers at level 0; if none is, the stem output (also output stride 4, like ``pnasnet``).
    """
    first = network_path[:LOW_LEVEL_LAYER]
    at_level0 = [i for i, level in enumerate(first) if level == 0]
    return at_level0[-1] if at_level0 else -1


class AutoDeepLabNet(nn.Module):
    """The found network: ``[N, in_channels, *S]`` float → logits ``[N, num_classes, *S]``.

    ``S`` is ``(H, W)`` for ``spatial_dims=2`` and ``(D, H, W)`` for ``spatial_dims=3``.
    """

    def __init__(self, genotype: Genotype, config: NetworkConfig | None = None) -> None:
        super().__init__()
        config = config or NetworkConfig()
        config.validate()
        for name in ("num_classes", "in_channels"):
            if getattr(config, name) is None:
                raise ConfigError(
                    f"network.{name}: must be a number to build a network (null, the dataset's count, is "
                    "for training settings)"
                )
        self.genotype = genotype
        self.config = config
        self._progress = 0.0
        f, dims = config.filter_multiplier, config.spatial_dims
        self.stem = Stem(config.in_channels, config.stem_channels, dims=dims)
        # Channel counts of h^{l-2} and h^{l-1} as the cells are stacked.
        c_prev_prev, c_prev = config.stem_channels[1], config.stem_channels[2]
        previous_level = 0
        self.cells = nn.ModuleList()
        for level in genotype.network_path:
            cell = FixedCell(
                genotype.cell, c_prev_prev, c_prev, f * 2**level, reduction=level > previous_level, dims=dims
            )
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
        self.aspp = ASPP(c_prev, config.aspp_channels, rates, dropout=config.aspp_dropout, dims=dims)
        fine = config.fine_skip_channels > 0
        self.decoder = DeepLabV3PlusDecoder(
            low_channels,
            config.aspp_channels,
            config.low_level_channels,
            config.decoder_channels,
            None if fine else config.num_classes,
            dims=dims,
        )
        full = config.full_skip_channels > 0
        self.fine_decoder = (
            FineDecoderStage(
                config.decoder_channels,
                config.stem_channels[1],
                config.fine_skip_channels,
                None if full else config.num_classes,
                dims,
            )
            if fine
            else None
        )
        self.full_decoder = (
            FullResolutionStage(
                config.fine_skip_channels,
                config.in_channels,
                config.full_skip_channels,
                config.num_classes,
                dims,
            )
            if full
            else None
        )
        self._init_weights()
        cheap_depthwise_backward(self)  # the sep convs' CPU training time (autodeeplab.ops.depthwise)

    def _init_weights(self) -> None:
        # PyTorch's default conv init (uniform, bound sqrt(1 / fan_in)) is exactly the released model's
        # variance_scaling(factor=1/3, FAN_IN, uniform); slim initialises biases to zero.
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Conv3d)) and m.bias is not None:
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

    def forward_features(self, x: torch.Tensor, with_stem: bool = False) -> tuple[torch.Tensor, ...]:
        """``[N, C, *S]`` → (last cell after ReLU, low-level features).

        The last cell's output is ``[N, B·F·2^s, *ceil(S/OS)]`` for its level ``s``; the low-level
        features are ``[N, c_low, *S4]`` at output stride 4.
        """
        prev_prev, prev = self.stem(x)
        stem_features = prev_prev  # output stride 2, for the optional fine decoder stage
        sizes = self.level_sizes(tuple(prev.shape[2:]))
        low_level = prev
        previous_level = 0
        for i, (cell, level, keep) in enumerate(
            zip(self.cells, self.genotype.network_path, self.cell_keep_probs(), strict=True)
        ):
            going_up = level < previous_level
            cell_input = resize(prev, sizes[level], align_corners=ALIGN_CORNERS) if going_up else prev
            out = cell(prev_prev, cell_input, keep)
            prev_prev, prev, previous_level = prev, out, level
            if i == self.low_level_index:
                low_level = out
        if with_stem:
            return torch.relu(prev), low_level, stem_features
        return torch.relu(prev), low_level

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[N, in_channels, *S]`` → logits ``[N, num_classes, *S]`` (any size)."""
        if self.fine_decoder is None:
            features, low_level = self.forward_features(x)
            logits = self.decoder(self.aspp(features), low_level)
        else:
            features, low_level, stem_features = self.forward_features(x, with_stem=True)
            logits = self.fine_decoder(self.decoder(self.aspp(features), low_level), stem_features)
            if self.full_decoder is not None:
                logits = self.full_decoder(logits, x)  # the stride-2 stage's features, then full resolution
        return resize(logits, x.shape[2:], align_corners=ALIGN_CORNERS)

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
    genotype: Genotype | str | os.PathLike[str] = "paper",
    config: NetworkConfig | None = None,
    *,
    variant: str | None = None,
    **settings: Any,
) -> AutoDeepLabNet:
    """Build from a genotype (object, built-in name, ``genotype.json`` or run directory).

    ``config`` (default :class:`NetworkConfig`'s defaults) gives the settings; ``variant`` ("S", "M",
    "L") sets the filter multiplier and ``settings`` (:class:`NetworkConfig` fields) override single
    values, validated like a config file's.
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
    base = (config or NetworkConfig()).to_dict()
    return AutoDeepLabNet(genotype, NetworkConfig.from_dict({**base, **settings}, source="network"))


__all__ = [
    "SPATIAL_DIMS",
    "VARIANTS",
    "AutoDeepLabNet",
    "NetworkConfig",
    "build_network",
    "low_level_layer_index",
]
