"""The search cell of Auto-DeepLab (paper §3.1): a DAG of B blocks whose edges are mixed ops.

Inputs and edges are numbered as in :mod:`autodeeplab.topology`. The cell output is the concatenation of the B
block outputs: ``[N, B·C, *S]``.

The found network's fixed cell lives with the network (:mod:`autodeeplab.network`); both build their
ops from the one table in :mod:`autodeeplab.primitives`.
"""

from __future__ import annotations

import torch
from torch import nn

from .primitives import POOL_PRIMITIVES, PRIMITIVES, ReLUConvBN, batch_norm_nd, build_op
from .topology import edge_offset, num_edges


class MixedOp(nn.Module):
    """Σ_p w_p · op_p(x) over the primitives (paper Eq. 2).

    ``none`` is never evaluated: its output is zero, so dropping the term is exact and saves a
    full-size zero tensor per edge. Pools get a BN without affine parameters during search so that
    their scale is comparable with the convolutions (DARTS convention).
    """

    def __init__(self, channels: int, affine: bool = False, dims: int = 2) -> None:
        super().__init__()
        ops, indices = [], []
        for index, name in enumerate(PRIMITIVES):
            if name == "none":
                continue
            op = build_op(name, channels, 1, affine, dims)
            if name in POOL_PRIMITIVES:
                op = nn.Sequential(op, batch_norm_nd(dims)(channels, affine=False))
            ops.append(op)
            indices.append(index)
        self.ops = nn.ModuleList(ops)
        self.op_indices: tuple[int, ...] = tuple(indices)

    def forward(self, x: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        """``x``: ``[N, C, *S]``, ``weights``: ``[P]`` softmax weights → ``[N, C, *S]``."""
        out = None
        for index, op in zip(self.op_indices, self.ops, strict=True):
            term = weights[index] * op(x)
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
    """

    def __init__(
        self,
        c_prev_prev: int,
        c_prev: int,
        channels: int,
        num_blocks: int,
        affine: bool = False,
        dims: int = 2,
    ) -> None:
        super().__init__()
        self.num_blocks = num_blocks
        self.channels = channels
        self.preprocess0 = ReLUConvBN(c_prev_prev, channels, 1, dims=dims)
        self.preprocess1 = ReLUConvBN(c_prev, channels, 1, dims=dims)
        self.edges = nn.ModuleList(MixedOp(channels, affine, dims) for _ in range(num_edges(num_blocks)))

    @property
    def out_channels(self) -> int:
        return self.num_blocks * self.channels

    def forward(self, h_prev_prev: torch.Tensor, h_prev: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
        """``h_prev_prev``: ``[N, c_prev_prev, *S]``, ``h_prev``: ``[N, c_prev, *S]``, ``alpha``: ``[E, P]``
        softmax weights → ``[N, B·channels, *S]``."""
        return self.blocks(self.preprocess0(h_prev_prev), self.preprocess1(h_prev), alpha)

    def blocks(self, s0: torch.Tensor, s1: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
        """Run the B blocks on already preprocessed inputs ``[N, channels, *S]`` each.

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
