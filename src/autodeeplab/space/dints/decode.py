"""Topology-guaranteed decoding of DiNTS: the most probable chain of block patterns that fits together.

A sequence of patterns ``c_0 .. c_{B-1}`` is a valid network when each block reads exactly what the block
before it wrote, ``I(c_{b+1}) = O(c_b)``: then every active node is fed (ultimately from the stem, which
feeds every depth of block 0) and every output reaches the head (which takes every depth of the last block).
Its probability is ``Π_b P[b, c_b]``. The best one is found by dynamic programming over the node set between
blocks (``2^D - 1`` states): ``O(B · C)`` time and ``O(B · 2^D + C)`` memory, where a shortest path over a
dense graph of ``(B·C + 2)²`` entries (MONAI's ``decode``) needs 1.3 GB at 4 depths and 77 GB at 5.

Ties: among sequences whose log probability is within ``tol`` of the best, the lexicographically smallest
sequence of pattern numbers wins (a brute-force enumeration with the same rule gives the same answer: tested).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from autodeeplab.errors import GenotypeError
from autodeeplab.space.dints.arch import OP_SETS, DintsArch
from autodeeplab.space.dints.topology import Topology, pattern_log_probs

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
    slack = tol * (1.0 + abs(best))
    chain: list[int] = []
    needed_rest = best  # what blocks b .. B-1 must still score for the chain to stay among the best
    for b in range(blocks):
        candidates = scores[b] + to_go[b + 1][outputs]
        allowed = candidates >= needed_rest - slack
        if b > 0:
            allowed &= inputs == outputs[chain[-1]]
        c = int(np.flatnonzero(allowed)[0])  # the smallest pattern number that can still be best
        chain.append(c)
        needed_rest -= scores[b, c]
    return chain, best


def decode_arch(edge_logits: torch.Tensor, op_logits: torch.Tensor, op_set: str) -> DintsArch:
    """The decoded architecture of edge logits ``a [B, E]`` and op logits ``w [B, E, K]``: the best chain of
    patterns (:func:`best_chain`, in float64), each active edge with its most likely op (first on ties)."""
    topology = Topology.for_edges(edge_logits.shape[1])
    log_p = pattern_log_probs(edge_logits.detach().double().cpu(), topology).numpy()
    chain, _ = best_chain(log_p, topology)
    ops = op_logits.detach().argmax(dim=-1).cpu().numpy()
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
    except (TypeError, ValueError) as exc:
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
    except (KeyError, TypeError, ValueError):
        probs = None
    if probs is None or probs.shape != a.shape or not ((probs >= 0) & (probs <= 1)).all():
        raise GenotypeError(f"{source}: edge_probabilities: expected {list(a.shape)} numbers in [0, 1]")
    if record.get("ops") != list(OP_SETS[op_set]):
        raise GenotypeError(f"{source}: ops: expected the op names of {op_set}, {list(OP_SETS[op_set])}")
    for key in ("memory_fraction", "decoded_memory_fraction", "memory_budget"):
        value = record.get(key, 0.0)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
            raise GenotypeError(f"{source}: {key}: expected a fraction in [0, 1], got {value!r}")
    return decode_arch(a, w, op_set)
