"""Decoding within a budget by Lagrangian relaxation, for any decoder that is a dynamic programme.

A decoder that maximises a score summed over its choices (log probabilities) can as easily maximise
``score - λ · cost`` when the cost is also such a sum (memory of the active edges, multiply-adds of the
layers). The solution for a given ``λ`` is the most probable one among all that cost no more than it does
(for any other, ``score' - λ·cost' <= score - λ·cost``, so ``cost' <= cost`` gives ``score' <= score``).
:func:`fit_by_lagrangian` finds by bisection the smallest ``λ`` whose solution fits the limit. A more
probable solution that also fits but costs more than the one returned can exist (the exact problem is a
knapsack): the answer is exact on the Lagrangian hull, not over every solution.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

Solution = TypeVar("Solution")


def fit_by_lagrangian(
    solve: Callable[[float], tuple[Solution, float]], limit: float, scale: float, steps: int = 60
) -> tuple[Solution, float]:
    """``solve(λ) -> (solution, cost)`` maximising ``score - λ·cost``; returns the solution of the smallest
    ``λ`` (to ``steps`` bisections) whose cost is at most ``limit``, and that ``λ`` (0 when the unconstrained
    solution fits). ``scale``: a first ``λ`` to try, e.g. the spread of the scores over the limit. When no
    solution fits, the cheapest one (the cost term alone decides) and ``λ = inf``."""
    solution, cost = solve(0.0)
    if cost <= limit:
        return solution, 0.0
    lo, hi = 0.0, max(scale, 1e-12)
    for _ in range(64):  # double until the solution fits
        solution, cost = solve(hi)
        if cost <= limit:
            break
        lo, hi = hi, 2 * hi
    else:  # at this λ the cost alone decides: the cheapest solution, and nothing fits
        return solution, float("inf")
    for _ in range(steps):
        mid = 0.5 * (lo + hi)
        candidate, cost = solve(mid)
        if cost <= limit:
            hi, solution = mid, candidate
        else:
            lo = mid
    return solution, hi
