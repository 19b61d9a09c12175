"""The terms DiNTS adds to the architecture step (He et al. 2021, §3.3-3.4): entropies that push edges and ops
towards a decision, the memory budget, and the topology loss that closes the gap between the continuous
supernet and what decoding can produce.

Shapes: edge logits ``a [B, E]``, op logits ``w [B, E, K]``; ``P [B, C]`` pattern probabilities
(:func:`~autodeeplab.space.dints.topology.pattern_log_probs`).
"""

from __future__ import annotations

import torch
from torch.nn import functional as F

from autodeeplab.space.dints.topology import Topology, pattern_log_probs


def edge_weights(edge_logits: torch.Tensor) -> torch.Tensor:
    """``[B, E]``: the weight of each edge in the supernet's node sums, its probability of being on given
    that the block has some edge on: ``η_i / (1 - Π_j (1 - η_j))`` (the marginal of ``P``; tested)."""
    on, off = F.logsigmoid(edge_logits), F.logsigmoid(-edge_logits)
    return torch.exp(on - torch.log(-torch.expm1(off.sum(dim=1, keepdim=True))))


def edge_entropy(edge_logits: torch.Tensor) -> torch.Tensor:
    """Mean binary entropy of the edge probabilities ``η = sigmoid(a)`` (nats): 0 when every edge is
    decided. Our choice where MONAI averages the entropy of the pattern distribution over its ``2^E - 1``
    entries (which makes the term tiny at 4 depths); both vanish exactly when every edge is decided."""
    eta = torch.sigmoid(edge_logits)
    return -(eta * F.logsigmoid(edge_logits) + (1 - eta) * F.logsigmoid(-edge_logits)).mean()


def op_entropy(op_logits: torch.Tensor) -> torch.Tensor:
    """Mean entropy (nats) of the op weights ``softmax(w)`` of every edge."""
    log_w = F.log_softmax(op_logits, dim=-1)
    return -(log_w.exp() * log_w).sum(dim=-1).mean()


def expected_memory(edge_logits: torch.Tensor, op_logits: torch.Tensor, cost: torch.Tensor) -> torch.Tensor:
    """Expected activation memory ``Σ_b Σ_i p̄[b,i] Σ_k softmax(w[b,i])_k cost[i,k]`` of the decoded network
    (``cost [E, K]`` or ``[B, E, K]``: what edge ``i`` with op ``k`` keeps for the backward, e.g. bytes)."""
    return (edge_weights(edge_logits)[..., None] * F.softmax(op_logits, dim=-1) * cost).sum()


def full_memory(op_logits: torch.Tensor, cost: torch.Tensor) -> torch.Tensor:
    """The memory of every edge on, under the current op weights: the budget's unit."""
    return (F.softmax(op_logits, dim=-1) * cost).sum()


def budget_loss(
    edge_logits: torch.Tensor, op_logits: torch.Tensor, cost: torch.Tensor, budget: float
) -> torch.Tensor:
    """``|usage / usage_full - budget|`` with ``budget`` a fraction of the full supernet's memory."""
    return (expected_memory(edge_logits, op_logits, cost) / full_memory(op_logits, cost) - budget).abs()


def topology_loss(edge_logits: torch.Tensor, topology: Topology, eps: float = 1e-5) -> torch.Tensor:
    """Agreement of consecutive blocks: for each block ``b < B - 1`` and node set ``n``, the probability
    that block ``b`` writes exactly ``n`` against the probability that block ``b + 1`` reads exactly ``n``,
    as a binary cross-entropy ``-[q log p + (1 - q) log(1 - p)]`` summed over ``n`` and ``b`` (0 at best
    when both are certain and agree; ``eps`` keeps the logs finite).
    """
    probs = pattern_log_probs(edge_logits, topology).exp()  # [B, C]
    states = 2**topology.depths
    writes = torch.zeros(probs.shape[0], states, dtype=probs.dtype, device=probs.device)
    reads = torch.zeros_like(writes)
    outputs = torch.as_tensor(topology.outputs, device=probs.device).expand_as(probs)
    inputs = torch.as_tensor(topology.inputs, device=probs.device).expand_as(probs)
    writes = writes.scatter_add(1, outputs, probs)[:, 1:]  # [B, 2^D - 1]: P(block b writes exactly n)
    reads = reads.scatter_add(1, inputs, probs)[:, 1:]  # P(block b reads exactly n)
    q, p = writes[:-1], reads[1:]
    return -(q * torch.log(p + eps) + (1 - q) * torch.log(1 - p + eps)).sum()
