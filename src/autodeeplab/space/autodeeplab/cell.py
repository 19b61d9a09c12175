"""The search cell of Auto-DeepLab (paper §3.1): a DAG of B blocks whose edges are mixed ops.

Inputs and edges are numbered as in :mod:`autodeeplab.space.autodeeplab.topology`. The cell output is the
concatenation of the B
block outputs: ``[N, B·C, *S]``.

Two ways to evaluate a cell, with the same modules and parameters:

- the reference path (:meth:`SearchCell.forward`, :meth:`SearchCell.blocks`): every op module called as
  it is, one incoming resolution at a time — the definition, kept for tests and comparisons;
- the fast path (:meth:`SearchCell.grouped_blocks`), exact as well: the G inputs h^{l-1} of a node run as
  one batch ``[G·N, C, *S]`` with per-group batch norm (:mod:`autodeeplab.fast.grouped_bn`); the edges that
  read
  the shared h^{l-2} run once for all groups; by default all the edges that read one state run as one
  fused call (:mod:`autodeeplab.fast.fused_edges`); otherwise edge by edge, optionally with one ReLU per edge
  for all of its conv ops. Max pools can keep no indices for the backward, and the α weights can be
  folded into the ops' last BN (:class:`EdgeOptions`).

Partial-channel connections (PC-DARTS, ``partial_channels`` K > 1, an approximation): each mixed op sees
only the first C/K channels; the others bypass it, and a channel shuffle mixes the two parts so that every
channel is searched over in some layer.

The found network's fixed cell lives with the network (:mod:`autodeeplab.nets.network`); both build their
ops from the one table in :mod:`autodeeplab.ops.primitives`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F
from torch.nn.modules.batchnorm import _BatchNorm

from autodeeplab.fast.fused_edges import fused_mixed_ops
from autodeeplab.fast.grouped_bn import batch_norm
from autodeeplab.fast.pointwise import apply_conv
from autodeeplab.ops.primitives import (
    POOL_PRIMITIVES,
    PRIMITIVES,
    ReLUConvBN,
    batch_norm_nd,
    build_op,
    max_pool_saving_input,
)
from autodeeplab.space.autodeeplab.topology import edge_offset, num_edges

_MAX_POOLS = (nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d)


@dataclass(frozen=True)
class EdgeOptions:
    """Exact speed/memory choices of the fast path for one mixed-op evaluation."""

    share_relu: bool = True
    """Compute the ReLU that starts every conv op of an edge once (4 ReLUs → 1, and 1 saved tensor)."""
    pool_without_indices: bool = True
    """Max pools recompute their argmax in the backward instead of keeping an int64 index tensor."""
    fold_alpha_into_bn: bool = True
    """Fold each op's α weight into its final BN's affine transform (weight γ·α, bias β·α): no product
    after the BN, and nothing kept for α's gradient but the BN's own input (one tensor less per op in
    architecture steps). In weight steps α is a constant and is folded in either way."""
    fuse_edges: bool = True
    """Evaluate all the edges that read one state together (:mod:`autodeeplab.fast.fused_edges`); implies
    the shared ReLU."""
    pointwise_matmul: bool = True
    """1×1 convolutions of channels-last activations as matmuls (:mod:`autodeeplab.fast.pointwise`)."""
    depthwise_flipped_grad: bool = True
    """Fused edges: the multiplier depthwise conv's input gradient as a flipped-filter depthwise conv
    (:mod:`autodeeplab.fast.depthwise`)."""


def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    """``[N, C, *S]`` → ``[N, C, *S]`` with channel ``g·(C/groups) + i`` moved to ``i·groups + g``."""
    n, c = x.shape[:2]
    return x.reshape(n, groups, c // groups, *x.shape[2:]).transpose(1, 2).reshape(x.shape)


def run_sequence(
    modules: nn.Sequential | list[nn.Module],
    x: torch.Tensor,
    groups: int = 1,
    repeats: int = 1,
    relu_x: torch.Tensor | None = None,
    pool_without_indices: bool = False,
    pointwise_matmul: bool = False,
) -> torch.Tensor:
    """Apply ``modules`` in order to ``x`` ``[G·N, C, *S]`` the way the fast path needs it.

    BatchNorms normalise each of the ``groups`` batch chunks on its own (and update their running
    statistics ``repeats`` times per group, see :func:`autodeeplab.fast.grouped_bn.batch_norm`); a leading
    ReLU is replaced by ``relu_x`` when given (the edge's shared ReLU of ``x``); with
    ``pointwise_matmul`` 1×1 convolutions of channels-last tensors run as matmuls.
    """
    for position, module in enumerate(modules):
        if position == 0 and relu_x is not None and isinstance(module, nn.ReLU):
            x = relu_x
        elif isinstance(module, _BatchNorm):
            x = batch_norm(x, module, groups, repeats)
        elif pool_without_indices and isinstance(module, _MAX_POOLS):
            x = max_pool_saving_input(x, module)
        else:  # a plain 1×1 conv of a channels-last x runs as a matmul with pointwise_matmul
            x = apply_conv(module, x, pointwise_matmul)
    return x


def _starts_with_relu(op: nn.Module) -> bool:
    return isinstance(op, nn.Sequential) and len(op) > 0 and isinstance(op[0], nn.ReLU)


class MixedOp(nn.Module):
    """Σ_p w_p · op_p(x) over the primitives (paper Eq. 2).

    ``none`` is never evaluated: its output is zero, so dropping the term is exact and saves a
    full-size zero tensor per edge. Pools get a BN without affine parameters during search so that
    their scale is comparable with the convolutions (DARTS convention). With ``partial_channels`` K > 1
    the ops have C/K channels (PC-DARTS).
    """

    def __init__(self, channels: int, affine: bool = False, dims: int = 2, partial_channels: int = 1) -> None:
        super().__init__()
        if partial_channels < 1 or channels % partial_channels:
            raise ValueError(f"partial_channels {partial_channels} must divide the {channels} channels")
        self.partial_channels = partial_channels
        width = channels // partial_channels
        ops, indices = [], []
        for index, name in enumerate(PRIMITIVES):
            if name == "none":
                continue
            op = build_op(name, width, 1, affine, dims)
            if name in POOL_PRIMITIVES:
                op = nn.Sequential(op, batch_norm_nd(dims)(width, affine=False))
            ops.append(op)
            indices.append(index)
        self.ops = nn.ModuleList(ops)
        self.op_indices: tuple[int, ...] = tuple(indices)
        self._position: dict[str, int] = {PRIMITIVES[index]: k for k, index in enumerate(indices)}
        self._relu_first: tuple[bool, ...] = tuple(_starts_with_relu(op) for op in ops)

    def op(self, name: str) -> nn.Module:
        """The module of primitive ``name`` (not ``none``, which has none)."""
        return self.ops[self._position[name]]

    def forward(
        self,
        x: torch.Tensor,
        weights: torch.Tensor,
        options: EdgeOptions | None = None,
        groups: int = 1,
        repeats: int = 1,
    ) -> torch.Tensor:
        """``x``: ``[G·N, C, *S]``, ``weights``: ``[P]`` softmax weights → ``[G·N, C, *S]``.

        ``options`` None: the reference evaluation (each op module called as it is; ``groups`` and
        ``repeats`` must be 1). Otherwise the fast path, with BN statistics per group of the batch.
        """
        k = self.partial_channels
        if k > 1:
            x, bypass = x.split([x.shape[1] // k, x.shape[1] - x.shape[1] // k], dim=1)
        if options is None:
            out = self._reference(x, weights)
        else:
            out = self._fast(x, weights, options, groups, repeats)
        if k > 1:
            out = channel_shuffle(torch.cat([out, bypass], dim=1), k)
        return out

    def _reference(self, x: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        out = None
        for index, op in zip(self.op_indices, self.ops, strict=True):
            term = weights[index] * op(x)
            out = term if out is None else out + term
        return out

    def _fast(
        self, x: torch.Tensor, weights: torch.Tensor, options: EdgeOptions, groups: int, repeats: int
    ) -> torch.Tensor:
        relu_x = F.relu(x) if options.share_relu else None
        # Fold each op's weight into its final BN's affine transform, so that the BN output is not kept
        # for α's gradient (see grouped_bn._fold_scale); a constant α (weight step) costs no product then
        fold = options.fold_alpha_into_bn or not weights.requires_grad
        out = None
        for index, op, relu_first in zip(self.op_indices, self.ops, self._relu_first, strict=True):
            modules = list(op) if isinstance(op, nn.Sequential) else [op]
            last_bn = fold and isinstance(modules[-1], _BatchNorm)
            y = run_sequence(
                modules[:-1] if last_bn else modules,
                x,
                groups,
                repeats,
                relu_x if relu_first else None,
                options.pool_without_indices,
                options.pointwise_matmul,
            )
            if last_bn:
                term = batch_norm(y, modules[-1], groups, repeats, scale=weights[index])
            else:
                term = weights[index] * y
            out = term if out is None else out + term
        return out


class SearchCell(nn.Module):
    """One node's cell in the supernet: two preprocessed inputs, B blocks of mixed ops, concat output.

    Args:
        c_prev_prev: channels of h^{l-2} as it arrives (after resizing to this node's resolution).
        c_prev: channels of h^{l-1} as it arrives (after the network-level resampling).
        channels: F·2^level, the width of every block.
        num_blocks: B.
        affine: whether the BNs inside the mixed ops learn a scale and shift.
        dims: number of spatial dimensions (2 for images, 3 for volumes).
        partial_channels: K of PC-DARTS (1: every channel goes through the mixed ops).
    """

    def __init__(
        self,
        c_prev_prev: int,
        c_prev: int,
        channels: int,
        num_blocks: int,
        affine: bool = False,
        dims: int = 2,
        partial_channels: int = 1,
    ) -> None:
        super().__init__()
        self.num_blocks = num_blocks
        self.channels = channels
        self.preprocess0 = ReLUConvBN(c_prev_prev, channels, 1, dims=dims)
        self.preprocess1 = ReLUConvBN(c_prev, channels, 1, dims=dims)
        self.edges = nn.ModuleList(
            MixedOp(channels, affine, dims, partial_channels) for _ in range(num_edges(num_blocks))
        )

    @property
    def out_channels(self) -> int:
        return self.num_blocks * self.channels

    def forward(self, h_prev_prev: torch.Tensor, h_prev: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
        """``h_prev_prev``: ``[N, c_prev_prev, *S]``, ``h_prev``: ``[N, c_prev, *S]``, ``alpha``: ``[E, P]``
        softmax weights → ``[N, B·channels, *S]``."""
        return self.blocks(self.preprocess0(h_prev_prev), self.preprocess1(h_prev), alpha)

    def blocks(self, s0: torch.Tensor, s1: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
        """Run the B blocks on already preprocessed inputs ``[N, channels, *S]`` each (reference path).

        Split out so that a caller can preprocess h^{l-2} once and reuse it for the three incoming
        resolutions of a node.
        """
        states = [s0, s1]
        for block in range(self.num_blocks):
            first = edge_offset(block)
            out = None
            for j, state in enumerate(states):
                term = self.edges[first + j](state, alpha[first + j])
                out = term if out is None else out + term
            states.append(out)
        return torch.cat(states[2:], dim=1)

    def grouped_blocks(
        self, s0: torch.Tensor, s1: torch.Tensor, alpha: torch.Tensor, groups: int, options: EdgeOptions
    ) -> list[torch.Tensor]:
        """The B block outputs for ``groups`` inputs h^{l-1} at once (fast path).

        ``s0``: preprocessed h^{l-2} ``[N, C, *S]``, shared by every group; ``s1``: the preprocessed
        h^{l-1} of each group stacked on the batch axis, ``[G·N, C, *S]``. Returns B tensors
        ``[G·N, C, *S]``; group g of each equals what :meth:`blocks` computes for ``(s0, s1[g])``.

        An edge reading ``s0`` gives the same output for every group, so it runs once (its BNs update
        their running statistics G times, as the G reference calls would) and is broadcast.
        """
        if options.fuse_edges:
            return self._fused_blocks(s0, s1, alpha, groups, options)
        n = s0.shape[0]
        states = [s1]
        outputs = []
        for block in range(self.num_blocks):
            first = edge_offset(block)
            shared = self.edges[first](s0, alpha[first], options, repeats=groups)
            out = None
            for j, state in enumerate(states, start=1):
                term = self.edges[first + j](state, alpha[first + j], options, groups=groups)
                out = term if out is None else out + term
            out = (out.unflatten(0, (groups, n)) + shared).flatten(0, 1)
            states.append(out)
            outputs.append(out)
        return outputs

    def _fused_blocks(
        self, s0: torch.Tensor, s1: torch.Tensor, alpha: torch.Tensor, groups: int, options: EdgeOptions
    ) -> list[torch.Tensor]:
        """:meth:`grouped_blocks` state by state: every state's outgoing edges run as one fused call.

        State j (0: h^{l-2}, 1: h^{l-1}, j ≥ 2: block j-2) feeds blocks max(0, j-1)..B-1; block b is
        complete once state b+1 has been processed. Partial sums are kept as ``[G, N, C, *S]``.
        """
        n, k = s0.shape[0], self.edges[0].partial_channels
        pending: list[torch.Tensor | None] = [None] * self.num_blocks
        states, outputs = [s0, s1], []
        for j in range(self.num_blocks + 1):
            readers = range(max(0, j - 1), self.num_blocks)
            indices = [edge_offset(b) + j for b in readers]
            x = states[j]
            width = x.shape[1] // k
            fused = fused_mixed_ops(
                x[:, :width] if k > 1 else x,
                [self.edges[i] for i in indices],
                alpha[indices],
                1 if j == 0 else groups,
                groups if j == 0 else 1,
                options.pool_without_indices,
                options.fold_alpha_into_bn,
                options.pointwise_matmul,
                options.depthwise_flipped_grad,
            )
            for i, b in enumerate(readers):
                term = fused[i]
                if k > 1:
                    term = channel_shuffle(torch.cat([term, x[:, width:]], dim=1), k)
                term = term.unsqueeze(0) if j == 0 else term.unflatten(0, (groups, n))
                pending[b] = term if pending[b] is None else pending[b] + term
            if j >= 1:  # block j-1 has all its inputs
                block = pending[j - 1].flatten(0, 1)
                pending[j - 1] = None
                states.append(block)
                outputs.append(block)
        return outputs

    def preprocess(
        self, which: int, x: torch.Tensor, groups: int = 1, pointwise_matmul: bool = False
    ) -> torch.Tensor:
        """``preprocess0`` or ``preprocess1`` (``which``) on ``[G·N, c, *S]`` with per-group BN statistics."""
        modules = self.preprocess0 if which == 0 else self.preprocess1
        return run_sequence(modules, x, groups, pointwise_matmul=pointwise_matmul)
