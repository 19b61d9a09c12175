"""The Auto-DeepLab supernet (paper §3, §4.1, §5.1): stem, L × levels trellis of search cells, ASPP heads.

Node ``(l, s)`` (layer ``l``, level ``s``) computes paper Eq. 6::

    ^sH^l = Σ_{s' ∈ {s-1, s, s+1}} β[l-1, s', s-s'+1] · Cell(resample(^{s'}H^{l-1}), ^sH^{l-2}; α)

with one cell (one set of weights) per node shared by its incoming resolutions, α shared by every
cell, and β normalised over each node's outgoing edges (Eq. 7). Resampling to a lower resolution is
ReLU → 3×3 conv stride 2 → BN; to a higher one, bilinear ×2 (to the exact size of the target level)
then ReLU → 1×1 conv → BN. Both produce the channel count of the target level's cell output
(``B·F·2^s``) so that the three inputs of a node fit one cell. h^{l-2} comes from the same level two
layers back, or, where that level does not exist yet, from the nearest level, resized.

This module is the reference evaluation, Eq. 6 literally: each incoming resolution through the cell in
turn, every op module called as it is. The exact fast path (:mod:`autodeeplab.fast.supernet`, chosen from
an ``ExecutionConfig`` by :func:`autodeeplab.fast.supernet.build_supernet`) evaluates these same modules
faster, with the same parameters and ``state_dict``, and is tested equal to it.

After layer L every level has an ASPP head (§5.1: 1×1 conv, 3×3 conv with rate 96/OS, image pooling)
ending in class logits; the four logit maps are upsampled to the input size and summed.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from autodeeplab.config.checks import IMAGE_DIMS, VOLUME_DIMS, at_least, dotted, non_negative
from autodeeplab.errors import ConfigError
from autodeeplab.ops.primitives import PRIMITIVES, ReLUConvBN, batch_norm_nd, conv_nd, resize
from autodeeplab.space.autodeeplab.budget import MacTables, decoded_multiply_adds, expected_multiply_adds
from autodeeplab.space.autodeeplab.budget_decode import RECORD_KEY, budget_record, decode_within_budget
from autodeeplab.space.autodeeplab.cell import SearchCell
from autodeeplab.space.autodeeplab.decode import arch_params_to_dict, decode
from autodeeplab.space.autodeeplab.genotype import MAX_NUM_LEVELS, Genotype
from autodeeplab.space.autodeeplab.random_arch import random_genotype
from autodeeplab.space.autodeeplab.topology import (
    beta_mask,
    incoming_edges,
    nearest_level,
    node_levels,
    num_edges,
    output_stride,
)


@dataclass
class SearchSpaceConfig:
    """Shape of the supernet. Defaults are the paper's search setting (§5.1)."""

    filter_multiplier: int = 8
    """F: a block at level s has F·2^s channels."""
    num_layers: int = 12
    """L."""
    num_blocks: int = 5
    """B."""
    num_levels: int = 4
    """Output strides 4, 8, 16, 32."""
    stem_channels: tuple[int, int, int] = (64, 64, 128)
    """Widths of the three stem convs (strides 2, 1, 2)."""
    aspp_rate_base: int = 96
    """The ASPP head at output stride OS uses atrous rate aspp_rate_base / OS (paper: 96/s)."""
    affine: bool = False
    """Learnable BN scale/shift inside the mixed ops (DARTS: off during search)."""
    arch_init_std: float = 1e-3
    """α and β start as arch_init_std · N(0, 1)."""
    spatial_dims: int = 2
    """2 for images, 3 for volumes."""
    partial_channels: int = 1
    """K of PC-DARTS partial-channel connections: 1/K of the channels go through each mixed op, the rest
    bypass it (an approximation that saves memory and time; 1 = off, the paper)."""

    def __post_init__(self) -> None:
        # Normalise only; the checks are in validate(), called by the parent config and by SearchNetwork.
        self.stem_channels = tuple(self.stem_channels)  # YAML gives lists

    def validate(self, where: str = "space") -> None:
        """Raise :class:`ConfigError` naming ``{where}.{field}`` for the first value that cannot work."""
        for name in ("filter_multiplier", "num_layers", "num_blocks", "num_levels", "aspp_rate_base"):
            at_least(dotted(where, name), getattr(self, name), 1)
        if self.num_levels > MAX_NUM_LEVELS:  # what a genotype file may name
            stride = 4 * 2 ** (MAX_NUM_LEVELS - 1)
            raise ConfigError(
                f"{dotted(where, 'num_levels')}: at most {MAX_NUM_LEVELS} (output stride {stride}), "
                f"got {self.num_levels}"
            )
        if len(self.stem_channels) != 3 or min(self.stem_channels) < 1:
            raise ConfigError(
                f"{dotted(where, 'stem_channels')}: must be 3 positive widths, got {list(self.stem_channels)}"
            )
        non_negative(dotted(where, "arch_init_std"), self.arch_init_std)
        if self.spatial_dims not in (IMAGE_DIMS, VOLUME_DIMS):
            raise ConfigError(
                f"{dotted(where, 'spatial_dims')}: must be {IMAGE_DIMS} (images) or {VOLUME_DIMS} (volumes), "
                f"got {self.spatial_dims}"
            )
        if self.partial_channels < 1 or self.filter_multiplier % self.partial_channels:
            f = dotted(where, "filter_multiplier")
            raise ConfigError(
                f"{dotted(where, 'partial_channels')}: must be at least 1 and divide {f} "
                f"({self.filter_multiplier}), got {self.partial_channels}"
            )


def normalize_alpha(alpha: torch.Tensor) -> torch.Tensor:
    """α logits ``[E, P]`` → softmax weights over primitives, per edge (paper Eq. 2)."""
    return torch.softmax(alpha, dim=-1)


def normalize_beta(beta: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """β logits ``[L, levels, 3]`` → weights: softmax over each node's valid outgoing edges (Eq. 7).

    Invalid edges (``mask`` False) get exactly 0; rows of nodes that do not exist are all 0.
    """
    logits = beta.masked_fill(~mask, float("-inf"))
    weights = torch.softmax(logits, dim=-1)
    return torch.nan_to_num(weights, nan=0.0)  # rows with no valid edge: softmax of all -inf


class Resample(nn.Module):
    """Bring ``[N, c_in, *S_src]`` to level ``target``'s resolution and ``c_out`` channels.

    ``direction`` -1: lower resolution (ReLU → 3×3 conv stride 2 → BN); +1: higher resolution
    (resize ×2 to the exact target size, then ReLU → 1×1 → BN); 0: same level (1×1 only if the
    channels differ, which happens only for the stem).
    """

    def __init__(self, c_in: int, c_out: int, direction: int, dims: int) -> None:
        super().__init__()
        self.direction = direction
        if direction < 0:
            self.conv = ReLUConvBN(c_in, c_out, 3, stride=2, dims=dims)
        elif direction > 0 or c_in != c_out:
            self.conv = ReLUConvBN(c_in, c_out, 1, dims=dims)
        else:
            self.conv = nn.Identity()

    def forward(self, x: torch.Tensor, size: tuple[int, ...]) -> torch.Tensor:
        """``[N, c_in, *S_src]`` → ``[N, c_out, *size]``."""
        if self.direction > 0:
            x = resize(x, size)
        return self.conv(x)


class SearchASPP(nn.Module):
    """Per-level search head (§5.1): [1×1 | 3×3 rate r | image pooling] → concat → 1×1 → logits.

    The image-pooling branch uses a biased 1×1 conv without BN so that it trains at batch size 1.
    ``[N, c_in, *S]`` → ``[N, num_classes, *S]``.
    """

    def __init__(self, c_in: int, width: int, num_classes: int, rate: int, dims: int) -> None:
        super().__init__()
        conv, bn = conv_nd(dims), batch_norm_nd(dims)
        self.branch1 = nn.Sequential(conv(c_in, width, 1, bias=False), bn(width), nn.ReLU())
        self.branch3 = nn.Sequential(
            conv(c_in, width, 3, padding=rate, dilation=rate, bias=False), bn(width), nn.ReLU()
        )
        self.pool_conv = nn.Sequential(conv(c_in, width, 1, bias=True), nn.ReLU())
        self.classifier = conv(3 * width, num_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = x.mean(dim=tuple(range(2, x.dim())), keepdim=True)
        pooled = self.pool_conv(pooled).expand(-1, -1, *x.shape[2:])
        return self.classifier(torch.cat([self.branch1(x), self.branch3(x), pooled], dim=1))


class SearchNetwork(nn.Module):
    """The supernet. ``forward``: image ``[N, in_channels, *S]`` → logits ``[N, num_classes, *S]``.

    The reference evaluation; :func:`autodeeplab.fast.supernet.build_supernet` builds one that evaluates
    these modules the fast way.
    """

    def __init__(self, config: SearchSpaceConfig, num_classes: int, in_channels: int = 3) -> None:
        super().__init__()
        self.config = config
        c = config
        c.validate()  # built from a SearchConfig, already checked; built alone, checked here
        dims, conv, bn = c.spatial_dims, conv_nd(c.spatial_dims), batch_norm_nd(c.spatial_dims)
        s0, s1, s2 = c.stem_channels
        self.stem = nn.Sequential(
            conv(in_channels, s0, 3, stride=2, padding=1, bias=False),
            bn(s0),
            nn.ReLU(),
            conv(s0, s1, 3, stride=1, padding=1, bias=False),
            bn(s1),
            nn.ReLU(),
            conv(s1, s2, 3, stride=2, padding=1, bias=False),
            bn(s2),
        )
        self.cells = nn.ModuleDict()
        self.resamplers = nn.ModuleDict()
        for layer in range(1, c.num_layers + 1):
            for level in node_levels(layer, c.num_levels):
                c_out = self.out_channels(level)
                for source, _ in incoming_edges(layer, level, c.num_levels):
                    key = f"{layer}_{source}_{level}"
                    c_src = self._channels_at(layer - 1, source)
                    self.resamplers[key] = Resample(c_src, c_out, source - level, dims)
                pp_level = nearest_level(layer - 2, level, c.num_levels)
                self.cells[f"{layer}_{level}"] = SearchCell(
                    self._channels_at(layer - 2, pp_level),
                    c_out,
                    c.filter_multiplier * 2**level,
                    c.num_blocks,
                    c.affine,
                    dims,
                    c.partial_channels,
                )
        self.heads = nn.ModuleList(
            SearchASPP(
                self.out_channels(level),
                self.out_channels(level),
                num_classes,
                max(1, c.aspp_rate_base // output_stride(level)),
                dims,
            )
            for level in range(c.num_levels)
        )
        edges, levels = num_edges(c.num_blocks), c.num_levels
        self.alpha = nn.Parameter(c.arch_init_std * torch.randn(edges, len(PRIMITIVES)))
        self.beta = nn.Parameter(c.arch_init_std * torch.randn(c.num_layers, levels, 3))
        self.register_buffer("beta_mask", torch.from_numpy(beta_mask(c.num_layers, levels)), persistent=False)
        self._weight_params: tuple[nn.Parameter, ...] | None = None  # see weight_parameters
        self.mac_budget: tuple[MacTables, float, float] | None = None  # see set_multiply_add_budget
        self.decode_within_budget = True  # with a budget: decode the most probable path that fits it

    def out_channels(self, level: int) -> int:
        """Channels of a cell output at ``level``: B·F·2^level."""
        return self.config.num_blocks * self.config.filter_multiplier * 2**level

    def _channels_at(self, layer: int, level: int) -> int:
        return self.config.stem_channels[-1] if layer <= 0 else self.out_channels(level)

    # -- parameter groups: the bilevel optimisation moves these separately ------------------------
    def arch_parameters(self) -> list[nn.Parameter]:
        """α ``[E, P]`` and β ``[L, levels, 3]`` logits."""
        return [self.alpha, self.beta]

    def weight_parameters(self) -> Iterator[nn.Parameter]:
        """Every parameter except α and β; listed on the first call (a walk of the paper's supernet's
        ~30,000 modules takes ~45 ms, twice per iteration), so, as for an optimizer, move the net first."""
        if self._weight_params is None:
            arch = {id(p) for p in self.arch_parameters()}
            self._weight_params = tuple(p for p in self.parameters() if id(p) not in arch)
        return iter(self._weight_params)

    def alpha_weights(self) -> torch.Tensor:
        """Softmax weights ``[E, P]``."""
        return normalize_alpha(self.alpha)

    def beta_weights(self) -> torch.Tensor:
        """Normalised weights ``[L, levels, 3]`` with exact zeros on edges that do not exist."""
        return normalize_beta(self.beta, self.beta_mask)

    # -- search-space contract (autodeeplab.space.contract) ----------------------------------------
    # These, with arch_parameters and weight_parameters above, make the supernet a SearchSpace: the
    # search loop, its state on disk and resume know the supernet only through them.
    @torch.no_grad()
    def decode(self) -> Genotype:
        """The genotype of the current α/β: top-2 inputs per block, Viterbi path (paper §4.3); with a
        multiply-add budget (and :attr:`decode_within_budget`), the most probable path whose network fits
        it (:mod:`.budget_decode`)."""
        alpha, beta = self.alpha_weights().cpu().numpy(), self.beta_weights().cpu().numpy()
        if self.mac_budget is not None and self.decode_within_budget:
            tables, target, _ = self.mac_budget
            return decode_within_budget(alpha, beta, self.config.num_blocks, tables, target)
        return decode(alpha, beta, self.config.num_blocks)

    def random_architecture(self, generator: torch.Generator) -> Genotype:
        """A genotype drawn uniformly from this supernet's space (:mod:`.random_arch`)."""
        c = self.config
        return random_genotype(c.num_layers, c.num_blocks, c.num_levels, generator)

    def arch_loss_terms(self) -> dict[str, torch.Tensor]:
        """None for the paper's search (the cross-entropy alone); with a multiply-add budget
        (:meth:`set_multiply_add_budget`) ``weight · |E[MACs] / target - 1|``."""
        if self.mac_budget is None:
            return {}
        tables, target, weight = self.mac_budget
        expected = expected_multiply_adds(
            self.alpha_weights(), self.beta_weights(), tables, self.config.num_blocks
        )
        return {"multiply_adds": weight * (expected / target - 1).abs().to(self.alpha.dtype)}

    def set_multiply_add_budget(self, tables: MacTables, target: float, weight: float = 1.0) -> None:
        """Add the budget term: ``target`` multiply-adds of the decoded network, counted by ``tables``."""
        self.mac_budget = (tables, float(target), float(weight))

    @torch.no_grad()
    def epoch_metrics(self) -> dict[str, float]:
        """With a budget: the expected and the decoded network's multiply-adds (billions), for
        ``metrics.jsonl``."""
        if self.mac_budget is None:
            return {}
        tables, target, _ = self.mac_budget
        alpha, beta = self.alpha_weights(), self.beta_weights()
        expected = expected_multiply_adds(alpha, beta, tables, self.config.num_blocks)
        decoded = decoded_multiply_adds(self.decode(), tables)
        return {
            "expected_gmacs": float(expected) / 1e9,
            "decoded_gmacs": decoded / 1e9,
            "target_gmacs": target / 1e9,
        }

    @torch.no_grad()
    def arch_record(self) -> dict[str, Any]:
        """The ``arch_params.json`` object: softmax α ``[E, P]`` and normalised β ``[L, levels, 3]``."""
        record = arch_params_to_dict(self.alpha_weights().cpu().numpy(), self.beta_weights().cpu().numpy())
        if self.mac_budget is not None and self.decode_within_budget:  # `decode` decodes within it too
            record[RECORD_KEY] = budget_record(*self.mac_budget[:2])
        return record

    # -- end of the search-space contract ---------------------------------------------------------

    # -- forward -----------------------------------------------------------------------------------
    def level_sizes(self, stem_size: tuple[int, ...]) -> list[tuple[int, ...]]:
        """Spatial size of every level: each stride-2 step gives ceil(n / 2), as the convs do."""
        sizes = [tuple(stem_size)]
        for _ in range(1, self.config.num_levels):
            sizes.append(tuple((n + 1) // 2 for n in sizes[-1]))
        return sizes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Image ``[N, in_channels, *S]`` → logits ``[N, num_classes, *S]``: the stem, Eq. 6 node by node,
        the heads."""
        c = self.config
        stem = self.stem(x)
        sizes = self.level_sizes(stem.shape[2:])
        alpha, beta = self.alpha_weights(), self.beta_weights()
        prev_prev: dict[int, torch.Tensor] = {0: stem}  # layer -1 is represented by the stem
        prev: dict[int, torch.Tensor] = {0: stem}
        for layer in range(1, c.num_layers + 1):
            current = {
                level: self._node(layer, level, prev_prev, prev, sizes, alpha, beta)
                for level in node_levels(layer, c.num_levels)
            }
            prev_prev, prev = prev, current
        return self.head_logits(prev, x.shape[2:])

    def head_logits(self, last: dict[int, torch.Tensor], size: tuple[int, ...]) -> torch.Tensor:
        """The last layer's nodes ``{level: [N, B·F·2^level, *S_level]}`` → the sum of the heads' logits,
        each upsampled to the input ``size``: ``[N, num_classes, *size]``."""
        logits = None
        for level, h in last.items():
            out = resize(self.heads[level](h), size)
            logits = out if logits is None else logits + out
        return logits

    def _node(
        self,
        layer: int,
        level: int,
        prev_prev: dict[int, torch.Tensor],
        prev: dict[int, torch.Tensor],
        sizes: list[tuple[int, ...]],
        alpha: torch.Tensor,
        beta: torch.Tensor,
    ) -> torch.Tensor:
        """Paper Eq. 6 for node ``(layer, level)`` → ``[N, B·F·2^level, *sizes[level]]``.

        ``prev_prev``/``prev``: the nodes of layers ``layer-2`` and ``layer-1`` by level; ``alpha`` ``[E, P]``
        and ``beta`` ``[L, levels, 3]``: normalised weights. Each incoming resolution goes through the
        node's one cell in turn; h^{l-2} (from the nearest level where its own does not exist yet, resized)
        is preprocessed once for all of them.
        """
        cell = self.cells[f"{layer}_{level}"]
        h_pp = resize(prev_prev[nearest_level(layer - 2, level, self.config.num_levels)], sizes[level])
        s0 = cell.preprocess0(h_pp)
        out = None
        for source, d in incoming_edges(layer, level, self.config.num_levels):
            h_prev = self.resamplers[f"{layer}_{source}_{level}"](prev[source], sizes[level])
            term = beta[layer - 1, source, d] * cell.blocks(s0, cell.preprocess1(h_prev), alpha)
            out = term if out is None else out + term
        return out
