"""The DiNTS network around the blocks: a stem per depth, the blocks of edge cells, a head that fuses every
depth back to the input's resolution. The search supernet (every edge, every op) and a found network (the
edges and ops of a :class:`~autodeeplab.space.dints.arch.DintsArch`) are the same body with different cells.

Depth ``d`` has ``channels · 2^d`` channels at ``ceil(S / 2^(d+1))`` (``S`` the input's size), each halving
rounding up as the stride-2 convolutions do.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from autodeeplab.ops.primitives import conv_nd, resize, strided_size
from autodeeplab.space.dints.cells import EdgeCell, norm_nd
from autodeeplab.space.dints.topology import Topology


@dataclass(frozen=True)
class DintsShape:
    """What a DiNTS body is built for (the search space's and the found network's common settings)."""

    depths: int = 4
    blocks: int = 12
    channels: int = 32
    """Channels at depth 0 (resolution 1/2); depth ``d`` has ``channels · 2^d``."""
    spatial_dims: int = 3
    norm: str = "instance"
    in_channels: int = 1
    num_classes: int = 2

    def width(self, depth: int) -> int:
        """Channels at ``depth``; depth -1 is the head's full-resolution stage (half of depth 0's)."""
        return self.channels * 2**depth if depth >= 0 else max(1, self.channels // 2)

    def sizes(self, input_size: Sequence[int]) -> list[tuple[int, ...]]:
        """Spatial size of each depth for an input of ``input_size``."""
        return [strided_size(tuple(input_size), 2 ** (d + 1)) for d in range(self.depths)]


def conv_norm_relu(c_in: int, c_out: int, dims: int, norm: str, stride: int = 1, relu: bool = True) -> list:
    return [
        conv_nd(dims)(c_in, c_out, 3, stride=stride, padding=1, bias=False),
        norm_nd(norm, c_out, dims),
        *([nn.ReLU()] if relu else []),
    ]


class DintsBody(nn.Module):
    """Stem → blocks → head. ``cells[b]`` maps edge index ``i`` (in :class:`Topology` order) to its cell;
    :meth:`run_blocks` takes the edge weights and op weights (``None`` in a found network)."""

    def __init__(self, shape: DintsShape, cells: Sequence[dict[int, EdgeCell]]) -> None:
        super().__init__()
        s, dims = shape, shape.spatial_dims
        if len(cells) != s.blocks:
            raise ValueError(f"{len(cells)} blocks of cells for {s.blocks} blocks")
        self.shape, self.topology = s, Topology(s.depths)
        # One stem per depth, as in DiNTS: the input resized to 1/2^d, then conv → norm → ReLU → conv with
        # stride 2 → norm (no ReLU at the end: every cell starts with its own).
        self.stems = nn.ModuleList(
            nn.Sequential(
                *conv_norm_relu(s.in_channels, s.width(d - 1) if d else s.width(-1), dims, s.norm),
                *conv_norm_relu(s.width(d - 1) if d else s.width(-1), s.width(d), dims, s.norm, 2, False),
            )
            for d in range(s.depths)
        )
        self.cells = nn.ModuleList(
            nn.ModuleDict({str(i): cell for i, cell in block.items()}) for block in cells
        )
        # The head, deepest first: ReLU → conv to the next shallower width → norm, resized up and added there.
        self.ups = nn.ModuleList(
            nn.Sequential(nn.ReLU(), *conv_norm_relu(s.width(d), s.width(d - 1), dims, s.norm, relu=False))
            for d in range(s.depths)
        )
        self.final = nn.Sequential(
            nn.ReLU(),
            *conv_norm_relu(s.width(-1), s.width(-1), dims, s.norm),
            conv_nd(dims)(s.width(-1), s.num_classes, 1, bias=True),
        )

    def forward_with(
        self, x: torch.Tensor, edge_weights: torch.Tensor | None, op_weights: torch.Tensor | None
    ) -> torch.Tensor:
        """Input ``[N, in_channels, *S]`` → logits ``[N, num_classes, *S]``.

        ``edge_weights [B, E]`` scale each edge's output in the node sums and ``op_weights [B, E, K]`` mix the
        ops of each edge (the supernet); ``None`` sums the cells as they are (a found network).
        """
        s, edges = self.shape, self.topology.edges
        size = tuple(x.shape[2:])
        sizes = s.sizes(size)
        nodes: list[torch.Tensor | None] = []
        for d, stem in enumerate(self.stems):
            scaled = x if d == 0 else resize(x, strided_size(size, 2**d), align_corners=True)
            nodes.append(stem(scaled))
        for b, block in enumerate(self.cells):
            new: list[torch.Tensor | None] = [None] * s.depths
            for key, cell in block.items():
                i = int(key)
                source, target = edges[i]
                if nodes[source] is None:
                    raise RuntimeError(
                        f"block {b}: edge {source}>{target} reads depth {source}, which is empty"
                    )
                weights = None if op_weights is None else op_weights[b, i]
                scale = None if edge_weights is None else edge_weights[b, i]
                if cell.lean and weights is not None and scale is not None:
                    weights, scale = weights * scale, None  # η folded into the op weights (lean path)
                out = cell(nodes[source], sizes[target], weights)
                if scale is not None:
                    out = scale * out
                new[target] = out if new[target] is None else new[target] + out
            nodes = new
        fused = None
        for d in reversed(range(s.depths)):
            here = nodes[d] if fused is None else (fused if nodes[d] is None else nodes[d] + fused)
            if here is None:
                continue  # nothing at this depth or below it yet
            target = sizes[d - 1] if d else size
            fused = resize(self.ups[d](here), target, align_corners=True)
        return self.final(fused)
