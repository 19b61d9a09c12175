"""Running-statistics updates of the fast path's batch norms, applied in closed form and together.

A BatchNorm module in training mode moves its running statistics once per call:
``r ← (1 - m)·r + m·s``. The fast path evaluates things together that the reference calls one by one
(:mod:`autodeeplab.fast.grouped_bn`), so one fused call owes a module K = G·R updates: its G batch groups' own
statistics s_0..s_{G-1} in group order, each R times (R > 1 for the shared input h^{l-2}). In closed form::

    r_K = d^G · r + Σ_g (1 - d) · d^(G-1-g) · s_g,      d = (1 - m)^R

Applied one by one that is G·R tiny foreach calls per fused call, thousands per forward; at search sizes
that cost ~0.3 s of a ~8 s iteration. Inside :func:`batched_running_stats` (the supernet's forward) the
updates are collected and applied when the block ends: one concatenation, one product and a few
foreach calls per (G, R) kind, whatever the number of modules. The closed form composes one record per
module, so the order between the records of different modules does not matter; a module recorded again
before the block ends (a forward that evaluates a cell once per incoming resolution records every module
of the cell once per resolution) first settles everything owed, so that its updates apply in order:
d²r + d(1-d)s₁ + (1-d)s₂, not d²r + (1-d)s₁ + (1-d)s₂. Equal to the sequential updates up to float
rounding (tested); if the forward raises, no running statistic moves.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections import defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
from torch import nn

_PENDING: contextvars.ContextVar[_PendingUpdates | None] = contextvars.ContextVar(
    "autodeeplab_pending_running_stats", default=None
)


@dataclass
class _Item:
    """One fused call's statistics: G batch means and inverse deviations ``1/sqrt(biased var + eps)``, each
    ``[E·C]`` (``[C]`` when ``shared``: the same for the E modules), over ``count`` values per channel."""

    bns: Sequence[nn.Module]
    means: list[torch.Tensor]
    invstds: list[torch.Tensor]
    shared: bool

    def per_module(self, stats: list[torch.Tensor], g: int) -> list[torch.Tensor]:
        return [stats[g]] * len(self.bns) if self.shared else [stats[g]]


class _PendingUpdates:
    """Updates owed, grouped by what their closed form depends on."""

    def __init__(self) -> None:
        self._items: dict[tuple, list[_Item]] = defaultdict(list)
        self._owed: set[int] = set()  # ids of the modules with an update in _items

    def owes(self, module: nn.Module) -> bool:
        """Whether ``module`` has an update waiting here."""
        return id(module) in self._owed

    def add(self, item: _Item, count: int, repeats: int) -> None:
        bns = item.bns
        momentum, eps = bns[0].momentum, bns[0].eps
        if momentum is None or any(bn.momentum != momentum or bn.eps != eps for bn in bns):
            raise ValueError("fused batch norm needs one fixed momentum and eps for all modules")
        if not self._owed.isdisjoint(map(id, bns)):  # a second record: apply the first one before it
            self.apply()
        self._owed.update(map(id, bns))
        mean = item.means[0]
        self._items[(len(item.means), repeats, momentum, eps, count, mean.dtype, mean.device)].append(item)

    def apply(self) -> None:
        with torch.no_grad():
            for key, items in self._items.items():
                _apply_kind(*key, items)
        self._items.clear()
        self._owed.clear()


_COEFFICIENTS: dict[tuple, torch.Tensor] = {}


def _coefficients(weights: tuple[float, ...], dtype, device) -> torch.Tensor:
    """The closed form's group weights as a tensor, made once per kind (a tensor made from Python numbers
    every forward would be a host-to-device copy each time, which a captured step cannot contain)."""
    key = (weights, dtype, device)
    if key not in _COEFFICIENTS:
        _COEFFICIENTS[key] = torch.tensor(weights, dtype=dtype, device=device)
    return _COEFFICIENTS[key]


def _apply_kind(
    groups: int, repeats: int, momentum: float, eps: float, count: int, dtype, device, items: list[_Item]
) -> None:
    """The closed-form update of every module in ``items`` (all alike in G, R, momentum, eps and count)."""
    decay = (1.0 - momentum) ** repeats
    weights = [(1.0 - decay) * decay ** (groups - 1 - g) for g in range(groups)]
    coef = _coefficients(tuple(weights), dtype, device)
    modules = [bn for item in items for bn in item.bns]
    sizes = [bn.running_mean.numel() for bn in modules]
    means = torch.stack(
        [torch.cat([m for it in items for m in it.per_module(it.means, g)]) for g in range(groups)]
    )
    invstds = torch.stack(
        [torch.cat([s for it in items for s in it.per_module(it.invstds, g)]) for g in range(groups)]
    )
    # The unbiased variance the running statistics track, from the kernel's 1/sqrt(biased variance + eps).
    variances = (invstds.pow(-2) - eps) * (count / max(count - 1, 1))
    for name, stats in (("running_mean", means), ("running_var", variances)):
        target = coef @ stats  # [Σ channels]
        buffers = [getattr(bn, name) for bn in modules]
        torch._foreach_mul_(buffers, decay**groups)
        torch._foreach_add_(buffers, list(target.to(buffers[0].dtype).split(sizes)))
    torch._foreach_add_([bn.num_batches_tracked for bn in modules], groups * repeats)


def record_running_stats(
    bns: Sequence[nn.Module],
    means: list[torch.Tensor],
    invstds: list[torch.Tensor],
    count: int,
    repeats: int = 1,
    shared: bool = False,
) -> None:
    """Owe E modules ``bns`` (C channels each) the statistics of G groups, each recorded ``repeats`` times.

    ``means``/``invstds``: G tensors ``[E·C]`` (``[C]`` with ``shared``: one normalisation recorded by every
    module), group order = call order: the batch means and ``1/sqrt(biased variance + eps)`` as
    ``torch.native_batch_norm`` returns them, over ``count`` values per channel. Applied now, or when the
    enclosing :func:`batched_running_stats` ends.
    """
    item = _Item(bns, list(means), list(invstds), shared)
    pending = _PENDING.get()
    if pending is not None:
        pending.add(item, count, repeats)
        return
    now = _PendingUpdates()
    now.add(item, count, repeats)
    now.apply()


def owes_running_stats(module: nn.Module) -> bool:
    """Whether an enclosing :func:`batched_running_stats` holds an update of ``module`` not applied yet
    (so that a module updating its own buffers now would jump the queue)."""
    pending = _PENDING.get()
    return pending is not None and pending.owes(module)


def settle_running_stats() -> None:
    """Apply every update the enclosing :func:`batched_running_stats` holds now (nothing outside one)."""
    pending = _PENDING.get()
    if pending is not None:
        pending.apply()


@contextlib.contextmanager
def batched_running_stats() -> Iterator[None]:
    """Collect the running-statistics updates made inside and apply them together at the end."""
    if _PENDING.get() is not None:  # already collecting (nested forward calls)
        yield
        return
    pending = _PendingUpdates()
    token = _PENDING.set(pending)
    try:
        yield
    finally:
        _PENDING.reset(token)
    pending.apply()
