"""The Auto-DeepLab supernet (paper §3, §4.1, §5.1): stem, L × levels trellis of search cells, ASPP heads.

Node ``(l, s)`` (layer ``l``, level ``s``) computes paper Eq. 6::

    ^sH^l = Σ_{s' ∈ {s-1, s, s+1}} β[l-1, s', s-s'+1] · Cell(resample(^{s'}H^{l-1}), ^sH^{l-2}; α)

with one cell (one set of weights) per node shared by its incoming resolutions, α shared by every
cell, and β normalised over each node's outgoing edges (Eq. 7). Resampling to a lower resolution is
ReLU → 3×3 conv stride 2 → BN; to a higher one, bilinear ×2 (to the exact size of the target level)
then ReLU → 1×1 conv → BN. Both produce the channel count of the target level's cell output
(``B·F·2^s``) so that the three inputs of a node fit one cell. h^{l-2} comes from the same level two
layers back, or, where that level does not exist yet, from the nearest level, resized.

Evaluation follows :class:`autodeeplab.fast.execution.ExecutionConfig`: the reference path (each incoming
resolution through the cell in turn, every op module called as it is) or the exact fast path (a node's
inputs as one batch, see :mod:`autodeeplab.space.autodeeplab.cell`), optionally channels-last and with
activation
checkpointing per node.

After layer L every level has an ASPP head (§5.1: 1×1 conv, 3×3 conv with rate 96/OS, image pooling)
ending in class logits; the four logit maps are upsampled to the input size and summed.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from functools import partial

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from autodeeplab.errors import ConfigError
from autodeeplab.fast.execution import ExecutionConfig
from autodeeplab.fast.grouped_bn import running_stats_frozen
from autodeeplab.fast.memory import note_held
from autodeeplab.fast.running_stats import batched_running_stats
from autodeeplab.ops.primitives import PRIMITIVES, ReLUConvBN, batch_norm_nd, conv_nd, resize
from autodeeplab.space.autodeeplab.cell import EdgeOptions, SearchCell, run_sequence
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
        self.stem_channels = tuple(self.stem_channels)  # YAML gives lists


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
        if self.direction > 0:
            x = resize(x, size)
        return self.conv(x)

    def fast(self, x: torch.Tensor, size: tuple[int, ...], pointwise_matmul: bool = False) -> torch.Tensor:
        """:meth:`forward` with the fast path's batch norm (honours frozen running statistics); with
        ``pointwise_matmul`` a 1×1 conv of channels-last ``x`` runs as a matmul."""
        if self.direction > 0:
            x = resize(x, size)
        if not isinstance(self.conv, nn.Sequential):
            return x
        return run_sequence(self.conv, x, pointwise_matmul=pointwise_matmul)


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

    ``execution`` chooses how it is evaluated (default: the exact fast path); it changes no result.
    """

    def __init__(
        self,
        config: SearchSpaceConfig,
        num_classes: int,
        in_channels: int = 3,
        execution: ExecutionConfig | None = None,
    ) -> None:
        super().__init__()
        self.config = config
        self.execution = execution if execution is not None else ExecutionConfig()
        c = config
        if c.partial_channels < 1 or c.filter_multiplier % c.partial_channels:
            raise ConfigError(
                f"space.partial_channels: {c.partial_channels} must be at least 1 and divide "
                f"space.filter_multiplier ({c.filter_multiplier})"
            )
        self.execution.check_levels(c.num_levels)
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
    # (contract methods go here)
    # -- end of the search-space contract ---------------------------------------------------------

    # -- forward -----------------------------------------------------------------------------------
    def level_sizes(self, stem_size: tuple[int, ...]) -> list[tuple[int, ...]]:
        """Spatial size of every level: each stride-2 step gives ceil(n / 2), as the convs do."""
        sizes = [tuple(stem_size)]
        for _ in range(1, self.config.num_levels):
            sizes.append(tuple((n + 1) // 2 for n in sizes[-1]))
        return sizes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c = self.config
        if self.execution.uses_channels_last(x.device.type, x.dim() - 2):
            x = x.contiguous(memory_format=torch.channels_last)  # the whole net follows its input's layout
        stem = self.stem(x)
        sizes = self.level_sizes(stem.shape[2:])
        alpha, beta = self.alpha_weights(), self.beta_weights()
        prev_prev: dict[int, torch.Tensor] = {0: stem}  # layer -1 is represented by the stem
        prev: dict[int, torch.Tensor] = {0: stem}
        recompute = torch.is_grad_enabled()  # under no_grad there is no backward to recompute for
        batched = self.execution.batch_running_stats and self.training
        with batched_running_stats() if batched else contextlib.nullcontext():
            for layer in range(1, c.num_layers + 1):
                current = {}
                for level in node_levels(layer, c.num_levels):
                    args = (layer, level, prev_prev, prev, sizes, alpha, beta)
                    if recompute and self.execution.checkpoints_level(level):
                        current[level] = self._checkpointed_node(*args)
                    else:
                        current[level] = self._node(*args)
                prev_prev, prev = prev, current
        logits = None
        for level, h in prev.items():
            out = resize(self.heads[level](h), x.shape[2:])
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
        """Paper Eq. 6 for node ``(layer, level)`` → ``[N, B·F·2^level, *sizes[level]]``."""
        cell = self.cells[f"{layer}_{level}"]
        h_pp = resize(prev_prev[nearest_level(layer - 2, level, self.config.num_levels)], sizes[level])
        sources = incoming_edges(layer, level, self.config.num_levels)
        weights = [beta[layer - 1, s, d] for s, d in sources]
        resamplers = [self.resamplers[f"{layer}_{s}_{level}"] for s, _ in sources]
        options = self._edge_options()
        if options is None:
            resampled = [r(prev[s], sizes[level]) for r, (s, _) in zip(resamplers, sources, strict=True)]
            return self._reference_node(cell, h_pp, resampled, weights, alpha)
        ex = self.execution
        matmul = options.pointwise_matmul
        resampled = [
            r.fast(prev[s], sizes[level], matmul) for r, (s, _) in zip(resamplers, sources, strict=True)
        ]
        s0 = cell.preprocess(0, h_pp, pointwise_matmul=matmul)  # shared by the three incoming resolutions
        if not ex.batch_node_inputs:  # one resolution at a time, the fast edges only
            out = None
            for h_prev, weight in zip(resampled, weights, strict=True):
                s1 = cell.preprocess(1, h_prev, pointwise_matmul=matmul)
                blocks = cell.grouped_blocks(s0, s1, alpha, 1, options)
                term = weight * torch.cat(blocks, dim=1)
                out = term if out is None else out + term
            return out
        groups, n = len(sources), h_pp.shape[0]
        s1 = torch.cat(resampled, dim=0) if groups > 1 else resampled[0]
        s1 = cell.preprocess(1, s1, groups, matmul)
        blocks = cell.grouped_blocks(s0, s1, alpha, groups, options)
        # Σ_g β_g · concat(blocks_g) = concat(Σ_g β_g · blocks_g): weigh each block, then concatenate.
        # Elementwise sums, not a reduction over the group axis: those keep the channels-last layout.
        return torch.cat(
            [_weighted_sum(weights, b.unflatten(0, (groups, n)).unbind(0)) for b in blocks], dim=1
        )

    def _edge_options(self) -> EdgeOptions | None:
        """The fast path's choices, or None for the reference path (every fast switch off)."""
        ex = self.execution
        options = EdgeOptions(
            ex.share_edge_relu,
            ex.pool_without_indices,
            ex.fold_alpha_into_bn,
            ex.fuse_edges,
            ex.pointwise_as_matmul,
            ex.depthwise_flipped_grad,
        )
        return options if ex.batch_node_inputs or any(vars(options).values()) else None

    @staticmethod
    def _reference_node(
        cell: SearchCell,
        h_pp: torch.Tensor,
        resampled: list[torch.Tensor],
        weights: list[torch.Tensor],
        alpha: torch.Tensor,
    ) -> torch.Tensor:
        """Eq. 6 literally: each incoming resolution through the cell in turn (h^{l-2} preprocessed once)."""
        s0 = cell.preprocess0(h_pp)
        out = None
        for h_prev, weight in zip(resampled, weights, strict=True):
            term = weight * cell.blocks(s0, cell.preprocess1(h_prev), alpha)
            out = term if out is None else out + term
        return out

    def _checkpointed_node(self, layer: int, level: int, prev_prev, prev, sizes, alpha, beta) -> torch.Tensor:
        """:meth:`_node` under activation checkpointing: its activations are recomputed in the backward.

        The recomputation runs in training mode again and must not update the BatchNorm running
        statistics a second time: the fast path freezes them during the recomputation (its batch norms
        consult :func:`running_stats_frozen`), the reference path saves and restores the node's buffers.
        Random state is restored by ``checkpoint`` itself (the cells draw none anyway).
        """
        levels = self.config.num_levels
        sources = [s for s, _ in incoming_edges(layer, level, levels)]
        if self._edge_options() is not None:
            recompute_context = running_stats_frozen
        else:
            modules = [self.cells[f"{layer}_{level}"]]
            modules += [self.resamplers[f"{layer}_{s}_{level}"] for s in sources]
            recompute_context = partial(_running_stats_kept, modules)
        note_held([prev_prev[nearest_level(layer - 2, level, levels)], *(prev[s] for s in sources)])
        return checkpoint(
            self._node,
            layer,
            level,
            prev_prev,
            prev,
            sizes,
            alpha,
            beta,
            use_reentrant=False,
            context_fn=lambda: (contextlib.nullcontext(), recompute_context()),
        )


def _weighted_sum(weights: list[torch.Tensor], tensors: tuple[torch.Tensor, ...]) -> torch.Tensor:
    out = None
    for w, t in zip(weights, tensors, strict=True):
        out = w * t if out is None else out + w * t
    return out


@contextlib.contextmanager
def _running_stats_kept(modules: list[nn.Module]) -> Iterator[None]:
    """Undo any change to the BatchNorm buffers of ``modules`` made inside the block."""
    buffers = [
        b for m in modules for name, b in m.named_buffers() if name.rsplit(".", 1)[-1] in _BN_STAT_BUFFERS
    ]
    saved = [b.clone() for b in buffers]
    try:
        yield
    finally:
        with torch.no_grad():
            for b, value in zip(buffers, saved, strict=True):
                b.copy_(value)


_BN_STAT_BUFFERS = frozenset({"running_mean", "running_var", "num_batches_tracked"})
