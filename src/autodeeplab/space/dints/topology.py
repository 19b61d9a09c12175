"""The DiNTS topology: edges between consecutive blocks, their activation patterns, and the probabilities.

``D`` depths (resolution ``1/2^(d+1)`` of the input behind the stem) and ``B`` blocks. Between block ``b``'s
input nodes and its output nodes (one per depth) run ``E = 3D - 2`` edges: output node ``m`` is fed from
depth ``m - 1`` (a down edge: resolution halves), ``m`` (same) and ``m + 1`` (an up edge), where they exist.
Edges are numbered by output node, then by input depth.

Each edge ``i`` of block ``b`` is on with probability ``η = sigmoid(a[b, i])``, independently of the others.
A block's *pattern* is the set of its edges that are on: ``C = 2^E - 1`` patterns, "all off" excluded, since
a block without an edge would disconnect the network. Pattern probabilities are renormalised over the
non-empty ones (the paper's Eq. 3):

    P[b, c] = Π_i η_i^{s_ci} (1 - η_i)^{1 - s_ci} / (1 - Π_i (1 - η_i))

A pattern ``c`` reads the node set ``I(c)`` (the input depths of its edges) and writes ``O(c)`` (their output
depths). Node sets are bit masks over depths (bit ``d`` = depth ``d``); a pattern is the bit mask of its
edges (bit ``i`` = edge ``i``), numbered ``c = mask - 1``.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np
import torch
from torch.nn import functional as F


@dataclass(frozen=True)
class Topology:
    """Edges and patterns of a DiNTS space with ``depths`` depths (``blocks`` does not change them)."""

    depths: int

    def __post_init__(self) -> None:
        if not isinstance(self.depths, int) or not 1 <= self.depths <= 6:
            # 6 depths: 16 edges, 65535 patterns per block; beyond that the enumeration is the cost.
            raise ValueError(f"depths must be an integer in 1..6, got {self.depths!r}")

    @staticmethod
    def depths_for_edges(num_edges: int) -> int | None:
        """The depth count whose blocks have ``num_edges = 3D - 2`` edges (None when there is none)."""
        depths, rest = divmod(num_edges + 2, 3)
        return depths if rest == 0 and 1 <= depths <= 6 else None

    @classmethod
    def for_edges(cls, num_edges: int) -> Topology:
        """The topology whose blocks have ``num_edges`` edges."""
        depths = cls.depths_for_edges(num_edges)
        if depths is None:
            raise ValueError(f"no DiNTS topology has {num_edges} edges per block (3·depths - 2)")
        return cls(depths)

    @cached_property
    def edges(self) -> tuple[tuple[int, int], ...]:
        """``(input depth, output depth)`` of each edge, in edge order (by output, then input depth)."""
        d = self.depths
        return tuple((i, m) for m in range(d) for i in (m - 1, m, m + 1) if 0 <= i < d)

    @property
    def num_edges(self) -> int:
        return len(self.edges)

    @property
    def num_patterns(self) -> int:
        return 2**self.num_edges - 1

    @cached_property
    def pattern_bits(self) -> np.ndarray:
        """``bool [C, E]``: the edges pattern ``c`` switches on (it is the edge mask ``c + 1``)."""
        masks = np.arange(1, 2**self.num_edges, dtype=np.int64)
        return (masks[:, None] >> np.arange(self.num_edges)) & 1 == 1

    @cached_property
    def inputs(self) -> np.ndarray:
        """``int64 [C]``: the node set (depth bit mask) each pattern reads."""
        return self._node_sets(0)

    @cached_property
    def outputs(self) -> np.ndarray:
        """``int64 [C]``: the node set (depth bit mask) each pattern writes."""
        return self._node_sets(1)

    def _node_sets(self, end: int) -> np.ndarray:
        node_bits = np.array([1 << edge[end] for edge in self.edges], dtype=np.int64)  # [E]
        sets = np.zeros(self.num_patterns, dtype=np.int64)
        for i, bit in enumerate(node_bits):
            sets |= np.where(self.pattern_bits[:, i], bit, 0)
        return sets


def pattern_log_probs(edge_logits: torch.Tensor, topology: Topology) -> torch.Tensor:
    """``log P [B, C]`` of every non-empty pattern of each block from the edge logits ``a [B, E]``.

    Differentiable; computed in log space (``log η = logsigmoid(a)``, ``log(1 - η) = logsigmoid(-a)``) so that
    confident edges do not round to 0 or 1. Each row sums to 1 in probability (tested).
    """
    if edge_logits.dim() != 2 or edge_logits.shape[1] != topology.num_edges:
        raise ValueError(
            f"edge logits must be [blocks, {topology.num_edges}] for {topology.depths} depths, "
            f"got {tuple(edge_logits.shape)}"
        )
    on, off = F.logsigmoid(edge_logits), F.logsigmoid(-edge_logits)  # [B, E]
    bits = torch.as_tensor(topology.pattern_bits, dtype=edge_logits.dtype, device=edge_logits.device)
    unnormalised = on @ bits.T + off @ (1 - bits).T  # [B, C]
    # log(1 - Π(1 - η)) = log(-expm1(Σ log(1 - η))): the probability that some edge is on.
    some_edge = torch.log(-torch.expm1(off.sum(dim=1, keepdim=True)))
    return unnormalised - some_edge
