"""Topology-guaranteed decoding of DiNTS: the most probable chain of block patterns that fits together.

A sequence of patterns ``c_0 .. c_{B-1}`` is a valid network when each block reads exactly what the block
before it wrote, ``I(c_{b+1}) = O(c_b)``: then every active node is fed (ultimately from the stem, which
feeds every depth of block 0) and every output reaches the head (which takes every depth of the last block).
Its probability is ``Π_b P[b, c_b]``. The best one is found by dynamic programming over the node set between
blocks (``2^D - 1`` states): ``O(B · C)`` time and ``O(B · 2^D + C)`` memory, where a shortest path over a
dense graph of ``(B·C + 2)²`` entries (MONAI's ``decode``) needs 1.3 GB at 4 depths and 77 GB at 5.

Ties: among sequences whose log probability is within ``tol`` of the best, the lexicographically smallest
sequence of pattern numbers wins (a brute-force enumeration with the same rule gives the same answer: tested).

Within a memory budget (:func:`budgeted_chain`): the budget loss steers the *expected* memory, but the most
probable topology can still use more (edges near probability 0.5 count half in the expectation and fully once
decoded). Memory is a sum over the active edges, so the chain maximising ``log P - λ · memory`` comes from the
same dynamic programme, and :func:`~autodeeplab.space.lagrangian.fit_by_lagrangian` finds the smallest ``λ``
whose chain fits (exact on the Lagrangian hull; tested against enumeration).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from autodeeplab.errors import GenotypeError
from autodeeplab.space.dints.arch import OP_SETS, DintsArch
from autodeeplab.space.dints.losses import full_memory
from autodeeplab.space.dints.topology import Topology, pattern_log_probs
from autodeeplab.space.lagrangian import fit_by_lagrangian

TIE_TOLERANCE = 1e-9
"""Sums of log probabilities closer than this (relative to their size) count as equal."""


def best_chain(
    log_probs: np.ndarray, topology: Topology, tol: float = TIE_TOLERANCE
) -> tuple[list[int], float]:
    """The pattern of each block of the most probable valid topology, and its log probability.

    ``log_probs``: ``[B, C]`` from :func:`pattern_log_probs` (any values; ``-inf`` forbids a pattern).
    Raises ``ValueError`` when no valid chain has a finite log probability.
    """
    scores = np.asarray(log_probs, dtype=np.float64)
    blocks, count = scores.shape
    if count != topology.num_patterns:
        raise ValueError(f"log_probs has {count} patterns per block, the topology {topology.num_patterns}")
    inputs, outputs = topology.inputs, topology.outputs
    states = 2**topology.depths  # node sets 1 .. 2^D - 1 (0 unused)
    # to_go[b][n]: the best log probability of blocks b .. B-1 when block b must read node set n.
    to_go = np.full((blocks + 1, states), -np.inf)
    to_go[blocks, 1:] = 0.0  # the head takes whatever the last block writes
    for b in range(blocks - 1, -1, -1):
        through = scores[b] + to_go[b + 1][outputs]  # [C]: pattern c at block b, then the best rest
        np.maximum.at(to_go[b], inputs, through)
    first = scores[0] + to_go[1][outputs]  # block 0 reads from the stem, which feeds every depth
    best = float(first.max())
    if not np.isfinite(best):
        raise ValueError("no valid topology has a non-zero probability")
    chain: list[int] = []
    # What blocks b .. B-1 must still score for the chain to stay among the best (within the tolerance).
    threshold = best - tol * (1.0 + abs(best))
    for b in range(blocks):
        candidates = scores[b] + to_go[b + 1][outputs]
        allowed = candidates >= threshold
        if b > 0:
            allowed &= inputs == outputs[chain[-1]]
        c = int(np.flatnonzero(allowed)[0])  # the smallest pattern number that can still be best
        chain.append(c)
        # The best continuation of c always qualifies: the two bounds differ by rounding only (sums taken in
        # another order), which matters when a tie sits exactly at the tolerance (as bisection finds them).
        threshold = min(threshold - scores[b, c], to_go[b + 1][outputs[c]])
    return chain, best


def budgeted_chain(
    log_probs: np.ndarray,
    costs: np.ndarray,
    limit: float,
    topology: Topology,
    tol: float = TIE_TOLERANCE,
    steps: int = 60,
) -> tuple[list[int], float]:
    """The most probable valid chain whose summed cost fits ``limit`` on the Lagrangian hull, and its ``λ``.

    ``log_probs``, ``costs``: ``[B, C]`` (a pattern's cost is the sum of its edges'; ``costs >= 0``). Returns
    the chain of :func:`best_chain` (``λ = 0``) when it fits; else the chain maximising ``log P - λ · cost``
    for the smallest ``λ`` (to ``steps`` bisections) whose chain fits; when no valid chain fits, the cheapest
    one (the most probable among equally cheap ones) and ``λ = inf``.
    """
    log_probs, costs = np.asarray(log_probs, dtype=np.float64), np.asarray(costs, dtype=np.float64)
    if costs.shape != log_probs.shape or not np.isfinite(costs).all() or (costs < 0).any():
        raise ValueError(f"costs must be finite, non-negative and {list(log_probs.shape)}")

    def solve(lam: float) -> tuple[list[int], float]:
        chain, _ = best_chain(log_probs - lam * costs, topology, tol)
        return chain, float(sum(costs[b, c] for b, c in enumerate(chain)))

    # The first λ weighs one unit of the budget like the spread of the log probabilities.
    finite = log_probs[np.isfinite(log_probs)]
    spread = max(1.0, float(finite.max() - finite.min())) if finite.size else 1.0
    return fit_by_lagrangian(solve, limit, spread / max(limit, 1e-12), steps)


def edge_costs(op_choice: np.ndarray, cost: np.ndarray) -> np.ndarray:
    """``[B, E]``: the cost of each edge with its chosen op, from ``op_choice [B, E]`` (op indices) and
    ``cost [E, K]`` or ``[B, E, K]``."""
    cost = np.broadcast_to(np.asarray(cost, dtype=np.float64), (*op_choice.shape, np.shape(cost)[-1]))
    return np.take_along_axis(cost, op_choice[..., None], axis=-1)[..., 0]


def decode_arch(
    edge_logits: torch.Tensor,
    op_logits: torch.Tensor,
    op_set: str,
    cost: torch.Tensor | None = None,
    budget: float | None = None,
) -> DintsArch:
    """The decoded architecture of edge logits ``a [B, E]`` and op logits ``w [B, E, K]``: the best chain of
    patterns (:func:`best_chain`, in float64), each active edge with its most likely op (first on ties).

    With ``cost`` (``[E, K]`` or ``[B, E, K]``, e.g. bytes) and ``budget`` (a fraction of the memory of
    every edge on under ``softmax(w)``, the unit of the budget loss): the best chain that fits the budget
    (:func:`budgeted_chain`).
    """
    topology = Topology.for_edges(edge_logits.shape[1])
    log_p = pattern_log_probs(edge_logits.detach().double().cpu(), topology).numpy()
    ops = op_logits.detach().argmax(dim=-1).cpu().numpy()
    if cost is None or budget is None:
        chain, _ = best_chain(log_p, topology)
    else:
        cost64 = cost.detach().double().cpu()
        full = float(full_memory(op_logits.detach().double().cpu(), cost64))
        per_edge = edge_costs(ops, cost64.numpy()) / full  # [B, E], fractions of every edge on
        chain, _ = budgeted_chain(
            log_p, per_edge @ topology.pattern_bits.T.astype(np.float64), budget, topology
        )
    return DintsArch.from_chain(chain, ops, topology, op_set)


def decode_record(record: Any, source: str = "arch_params.json") -> DintsArch:
    """Decode a DiNTS ``arch_params.json`` object (the supernet's :meth:`arch_record`) exactly as the search
    decoded it (from the logits it holds); a malformed record is one :class:`GenotypeError` naming the key."""
    if not isinstance(record, dict) or record.get("kind") != "dints":
        raise GenotypeError(f"{source}: not a DiNTS arch_params record (kind 'dints')")
    op_set = record.get("op_set")
    if op_set not in OP_SETS:
        raise GenotypeError(f"{source}: op_set: unknown {op_set!r} (choose from {', '.join(OP_SETS)})")
    try:
        a = torch.tensor(record["edge_logits"], dtype=torch.float64)
        w = torch.tensor(record["op_logits"], dtype=torch.float64)
    except KeyError as exc:
        raise GenotypeError(f"{source}: missing key {exc.args[0]!r}") from None
    except (TypeError, ValueError, OverflowError, RuntimeError) as exc:  # Overflow: an int beyond float64
        raise GenotypeError(f"{source}: edge_logits/op_logits are not arrays of numbers ({exc})") from None
    k = len(OP_SETS[op_set])
    if a.dim() != 2 or a.shape[0] < 1 or Topology.depths_for_edges(a.shape[1]) is None:
        raise GenotypeError(
            f"{source}: edge_logits: expected [blocks, edges of D depths], got {list(a.shape)}"
        )
    if tuple(w.shape) != (*a.shape, k):
        raise GenotypeError(f"{source}: op_logits: expected {[*a.shape, k]}, got {list(w.shape)}")
    if not (torch.isfinite(a).all() and torch.isfinite(w).all()):
        raise GenotypeError(f"{source}: edge_logits/op_logits hold non-finite values")
    topology = Topology.for_edges(a.shape[1])
    if record.get("edges") != [list(e) for e in topology.edges]:
        raise GenotypeError(f"{source}: edges: expected the {topology.depths}-depth edges in topology order")
    try:
        probs = torch.tensor(record["edge_probabilities"], dtype=torch.float64)
    except (KeyError, TypeError, ValueError, OverflowError, RuntimeError):
        probs = None
    if probs is None or probs.shape != a.shape or not ((probs >= 0) & (probs <= 1)).all():
        raise GenotypeError(f"{source}: edge_probabilities: expected {list(a.shape)} numbers in [0, 1]")
    if record.get("ops") != list(OP_SETS[op_set]):
        raise GenotypeError(f"{source}: ops: expected the op names of {op_set}, {list(OP_SETS[op_set])}")
    for key in ("memory_fraction", "decoded_memory_fraction", "memory_budget"):
        value = record.get(key, 0.0)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
            raise GenotypeError(f"{source}: {key}: expected a fraction in [0, 1], got {value!r}")
    within = record.get("decode_within_budget", False)  # records before it decoded without the budget
    if not isinstance(within, bool):
        raise GenotypeError(f"{source}: decode_within_budget: expected true or false, got {within!r}")
    if not within:
        return decode_arch(a, w, op_set)
    try:
        cost = torch.tensor(record["memory_cost"], dtype=torch.float64)
    except (KeyError, TypeError, ValueError, OverflowError, RuntimeError):
        cost = None
    if (
        cost is None
        or cost.shape not in (w.shape[1:], w.shape)
        or not (torch.isfinite(cost) & (cost >= 0)).all()
        or not (cost > 0).any()  # the budget is a fraction of the total
    ):
        raise GenotypeError(
            f"{source}: memory_cost: expected {list(w.shape[1:])} numbers >= 0, not all 0 (bytes per edge "
            "and op)"
        )
    return decode_arch(a, w, op_set, cost, float(record["memory_budget"]))
