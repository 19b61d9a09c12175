"""The DiNTS search supernet (every edge of every block, every op of the op set); the found network is
:class:`autodeeplab.nets.dints.DintsNet`, the same body with the decoded edges and ops only.

Architecture weights: edge logits ``a [B, E]`` (each edge on with probability ``sigmoid(a)``) and op logits
``w [B, E, K]``. A node sums its incoming edges, each scaled by :func:`~.losses.edge_weights` (the edge's
probability given that its block has some edge on) and mixing its ops by ``softmax(w)``.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from torch import nn

from autodeeplab.space.dints.arch import OP_SETS, DintsArch
from autodeeplab.space.dints.cells import EdgeCell
from autodeeplab.space.dints.decode import decode_arch
from autodeeplab.space.dints.losses import (
    budget_loss,
    edge_entropy,
    edge_weights,
    expected_memory,
    full_memory,
    op_entropy,
    topology_loss,
)
from autodeeplab.space.dints.network import DintsBody, DintsShape
from autodeeplab.space.dints.topology import Topology

OP_MEMORY = {
    "skip_connect": 0.0,  # nothing kept
    "conv_3x3x3": 2.0,  # the ReLU's output (which the conv reads) and the conv's output (the norm's input)
    "conv_3x3": 2.0,
    "conv_3x3x1": 3.0,  # ... and the first conv's output, which the second reads
    "conv_3x1x3": 3.0,
    "conv_1x3x3": 3.0,
}
"""Activations an op keeps for its backward, in units of its output (``[N, C, *S]`` at the target depth)."""
NORM_STATISTICS = 3
"""Per-channel values a norm keeps for its backward (instance norm: per sample and channel)."""


def edge_memory(direction: int, dims: int) -> float:
    """What an edge's resampling keeps, in units of the output of the edge: a down edge's two subsampled
    ReLU outputs (each half the channels at the output's voxels) and the concatenation; an up edge's ReLU
    output (the resized input, twice the channels) and its conv's output."""
    if direction > 0:
        return 0.5 + 0.5 + 1.0
    if direction < 0:
        return 2.0 + 1.0
    return 0.0


def memory_cost(
    shape: DintsShape,
    ops: tuple[str, ...],
    input_size: tuple[int, ...],
    op_memory: dict[str, float] | None = None,
) -> torch.Tensor:
    """``[E, K]``: the float32 bytes edge ``i`` with op ``k`` keeps for its backward on one ``input_size``
    sample (a found network's cells; checked against the saved-tensor counter). ``op_memory``: the units
    of ops without a hand-made factor (:data:`OP_MEMORY`), e.g. Auto-DeepLab's primitives, measured by
    the caller."""
    units_of = {**OP_MEMORY, **(op_memory or {})}
    missing = [op for op in ops if op not in units_of]
    if missing:
        raise ValueError(f"no memory factor for {', '.join(missing)}: pass op_memory")
    topo, sizes = Topology(shape.depths), shape.sizes(input_size)
    cost = torch.zeros(topo.num_edges, len(ops), dtype=torch.float64)
    for i, (source, target) in enumerate(topo.edges):
        width, voxels = shape.width(target), float(np.prod(sizes[target]))
        for k, op in enumerate(ops):
            norms = (op != "skip_connect") + (source != target)
            units = units_of[op] + edge_memory(target - source, shape.spatial_dims)
            # Each norm also keeps three per-channel statistics (a few bytes beside the maps at real sizes).
            cost[i, k] = 4 * width * (units * voxels + NORM_STATISTICS * norms)
    return cost


def random_below(n: int, generator: torch.Generator) -> int:
    """A uniform integer in ``[0, n)`` for any Python ``n`` (``torch.randint`` stops at 2^63): 62-bit
    pieces from ``generator``, rejected when the number they make is not below ``n``."""
    bits = max(1, (n - 1).bit_length())
    pieces = -(-bits // 62)
    while True:
        value = 0
        for piece in torch.randint(0, 2**62, (pieces,), generator=generator).tolist():
            value = (value << 62) | piece
        value >>= pieces * 62 - bits  # keep the top ``bits`` bits: at most 2n candidates, accept >= 1/2
        if value < n:
            return value


class DintsSupernet(nn.Module):
    """DiNTS's search space as a :class:`~autodeeplab.space.contract.SearchSpace`.

    ``memory_budget``: the target expected memory as a fraction of every edge on; ``probe_size``: the patch
    the memory is counted on (mostly its proportions matter for the fraction; the norms' per-channel
    statistics and the rounding of odd sizes make small patches weigh the deep depths a little more);
    ``lean``: the memory-lean evaluation of the mixed edges (:class:`~.cells.EdgeCell`), False for the
    reference;
    ``recompute``: with ``lean``, the pseudo-3D pairs' middle maps are recomputed in the backward (less
    memory, more time: ``benchmarks/bench_dints.py``); ``op_set``: ``dints`` (DiNTS's cells) or
    ``autodeeplab`` (Auto-DeepLab's primitives but ``none``, whose memory factors ``op_memory`` gives);
    ``decode_within_budget``: :meth:`decode` returns the most probable topology whose memory fits the budget
    (else the most probable one).
    """

    def __init__(
        self,
        shape: DintsShape,
        memory_budget: float = 0.5,
        topology_weight: float = 1e-3,
        probe_size: tuple[int, ...] | None = None,
        lean: bool = True,
        recompute: bool = True,
        op_set: str = "dints",
        op_memory: dict[str, float] | None = None,
        decode_within_budget: bool = True,
    ) -> None:
        super().__init__()
        self.shape, self.topology = shape, Topology(shape.depths)
        self.op_set = f"{op_set}-{shape.spatial_dims}d"
        self.op_names = OP_SETS[self.op_set]
        cells = [
            {
                i: EdgeCell(a, z, shape.width, self.op_names, shape.spatial_dims, shape.norm)
                for i, (a, z) in enumerate(self.topology.edges)
            }
            for _ in range(shape.blocks)
        ]
        self.body = DintsBody(shape, cells)
        for block in cells:
            for cell in block.values():
                cell.lean, cell.recompute = lean, recompute
        e, k = self.topology.num_edges, len(self.op_names)
        self.edge_logits = nn.Parameter(1e-3 * torch.randn(shape.blocks, e))
        self.op_logits = nn.Parameter(1e-3 * torch.randn(shape.blocks, e, k))
        self.memory_budget, self.topology_weight = memory_budget, topology_weight
        self.decode_within_budget = decode_within_budget
        probe = probe_size or (2 ** (shape.depths + 1),) * shape.spatial_dims
        self.register_buffer(
            "cost", memory_cost(shape, self.op_names, probe, op_memory).float(), persistent=False
        )
        self.arch_weight = 1.0  # the ramp of the extra terms; the loop sets it (0 in the warm-up)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[N, in_channels, *S]`` → ``[N, num_classes, *S]`` with every edge and op, weighted."""
        ops = torch.softmax(self.op_logits, dim=-1)
        return self.body.forward_with(x, edge_weights(self.edge_logits), ops)

    # -- search-space contract ---------------------------------------------------------------------------
    def arch_parameters(self) -> list[nn.Parameter]:
        return [self.edge_logits, self.op_logits]

    def weight_parameters(self) -> Iterator[nn.Parameter]:
        return iter(self.body.parameters())

    def decode(self) -> DintsArch:
        """The most probable valid topology (:func:`~.decode.best_chain`), within the memory budget when
        :attr:`decode_within_budget`; each active edge with its argmax op."""
        if self.decode_within_budget:
            return decode_arch(self.edge_logits, self.op_logits, self.op_set, self.cost, self.memory_budget)
        return decode_arch(self.edge_logits, self.op_logits, self.op_set)

    def random_architecture(self, generator: torch.Generator) -> DintsArch:
        """A topology drawn uniformly from the valid chains of patterns, an op uniformly per active edge."""
        topo, blocks = self.topology, self.shape.blocks
        # ways[b][n]: how many valid chains blocks b .. B-1 have when block b must read node set n.
        ways = np.zeros((blocks + 1, 2**topo.depths), dtype=object)  # exact integers (they grow as C^B)
        ways[blocks, 1:] = 1
        for b in range(blocks - 1, -1, -1):
            for c in range(topo.num_patterns):
                ways[b, topo.inputs[c]] += ways[b + 1, topo.outputs[c]]
        chain: list[int] = []
        for b in range(blocks):
            allowed = [
                c for c in range(topo.num_patterns) if b == 0 or topo.inputs[c] == topo.outputs[chain[-1]]
            ]
            counts = [ways[b + 1, topo.outputs[c]] for c in allowed]
            pick = random_below(int(sum(counts)), generator)  # exact: the counts outgrow 64 bits
            for c, count in zip(allowed, counts, strict=True):
                if pick < count:
                    chain.append(c)
                    break
                pick -= count
        ops = torch.randint(len(self.op_names), (blocks, topo.num_edges), generator=generator).numpy()
        return DintsArch.from_chain(chain, ops, topo, self.op_set)

    def decoded_memory(self, arch: DintsArch) -> torch.Tensor:
        """The activation memory of ``arch``'s cells on the probe (bytes; the unit of :meth:`arch_record`'s
        fractions, which divide it by every edge on under the current op weights)."""
        index = {edge: i for i, edge in enumerate(self.topology.edges)}
        ops = {name: k for k, name in enumerate(self.op_names)}
        return sum(self.cost[index[(a, z)], ops[op]] for block in arch.blocks for a, z, op in block)

    def set_search_progress(self, epoch: int, epochs: int, arch_start_epoch: int) -> None:
        """The terms' weight ramps linearly from 0 at the first architecture epoch (the end of the warm-up)
        towards 1 at the last, as in DiNTS's search script."""
        span = max(1, epochs - arch_start_epoch)
        self.arch_weight = min(1.0, max(0.0, (epoch - arch_start_epoch) / span))

    def arch_loss_terms(self) -> dict[str, torch.Tensor]:
        """The DiNTS terms, each times :attr:`arch_weight` (ramped after the warm-up by the loop)."""
        a, w, weight = self.edge_logits, self.op_logits, self.arch_weight
        return {
            "edge_entropy": weight * edge_entropy(a),
            "op_entropy": weight * op_entropy(w),
            "memory": weight * budget_loss(a, w, self.cost, self.memory_budget),
            "topology": weight * self.topology_weight * topology_loss(a, self.topology),
        }

    @torch.no_grad()
    def arch_record(self) -> dict[str, Any]:
        """Edge probabilities ``sigmoid(a) [B, E]``, op weights ``[B, E, K]``, the expected memory and the
        decoded network's as fractions of every edge on, and the logits themselves (``decode`` reads them
        back exactly)."""
        usage = expected_memory(self.edge_logits, self.op_logits, self.cost)
        full = full_memory(self.op_logits, self.cost)
        decoded = self.decoded_memory(self.decode())
        return {
            "kind": "dints",
            "op_set": self.op_set,
            "edges": [list(e) for e in self.topology.edges],
            "ops": list(self.op_names),
            "edge_probabilities": torch.sigmoid(self.edge_logits).tolist(),
            "op_weights": torch.softmax(self.op_logits, dim=-1).tolist(),
            "memory_fraction": float(usage / full),
            "decoded_memory_fraction": float(decoded / full),
            "memory_budget": self.memory_budget,
            "decode_within_budget": self.decode_within_budget,
            "memory_cost": self.cost.tolist(),
            "edge_logits": self.edge_logits.tolist(),
            "op_logits": self.op_logits.tolist(),
        }
