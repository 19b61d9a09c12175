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
    ``[E·C]`` (``[C]`` when ``shared``: the same for the E modules), over ``count`` values per channel; or,
    with ``in_channels``, one ``[G·E·C]`` (``[G·C]``) tensor each, the G groups side by side."""

    bns: Sequence[nn.Module]
    means: list[torch.Tensor]
    invstds: list[torch.Tensor]
    shared: bool
    in_channels: bool = False

    def per_module(self, stats: list[torch.Tensor], g: int) -> list[torch.Tensor]:
        return [stats[g]] * len(self.bns) if self.shared else [stats[g]]

    def layout(self) -> tuple[bool, int, int]:
        """What :func:`_group_index` needs to know of this item: shared, module count, values per group."""
        return self.shared, len(self.bns), self.means[0].numel()


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
        groups = len(item.means)
        if item.in_channels:  # one [G·E·C] (shared: [G·C]) tensor
            groups = mean.numel() // (1 if item.shared else len(bns)) // bns[0].running_mean.numel()
        key = (groups, repeats, momentum, eps, count, mean.dtype, mean.device, item.in_channels)
        self._items[key].append(item)

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
        with torch.inference_mode(False):  # reused outside inference mode (fast/cell.py's _state_major_order)
            _COEFFICIENTS[key] = torch.tensor(weights, dtype=dtype, device=device)
    return _COEFFICIENTS[key]


_INDICES: dict[tuple, torch.Tensor] = {}


def _group_index(layouts: tuple[tuple[bool, int, int], ...], groups: int, device) -> torch.Tensor:
    """``[G, Σ channels]`` positions in the concatenation of items whose G groups lie side by side
    (``[G·X]`` each): row g lists, item after item and module after module, where group g's statistics of
    each module are (a shared item's ``[C]`` once per module). Made once per layout and device."""
    key = (layouts, groups, device)
    if key not in _INDICES:
        rows: list[list[int]] = [[] for _ in range(groups)]
        offset = 0
        for shared, modules, total in layouts:
            per_group = total // groups
            width = per_group if shared else per_group // modules
            for g in range(groups):
                start = offset + g * per_group
                for m in range(modules):
                    first = start if shared else start + m * width
                    rows[g].extend(range(first, first + width))
            offset += total
        with torch.inference_mode(False):
            _INDICES[key] = torch.tensor(rows, device=device)
    return _INDICES[key]


def _stacked(items: list[_Item], groups: int, in_channels: bool, device) -> tuple[torch.Tensor, torch.Tensor]:
    """The items' means and inverse deviations as ``[G, Σ channels]`` (module order within a group)."""
    names = ("means", "invstds")
    if in_channels:  # one gather from the concatenation, where a split per item would cost a dispatch each
        index = _group_index(tuple(it.layout() for it in items), groups, device)
        means, invstds = (torch.cat([getattr(it, name)[0] for it in items])[index] for name in names)
        return means, invstds
    out = []
    for name in names:
        rows = [[t for it in items for t in it.per_module(getattr(it, name), g)] for g in range(groups)]
        out.append(torch.stack([torch.cat(row) for row in rows]))
    return out[0], out[1]


def _apply_kind(
    groups: int,
    repeats: int,
    momentum: float,
    eps: float,
    count: int,
    dtype,
    device,
    in_channels: bool,
    items: list[_Item],
) -> None:
    """The closed-form update of every module in ``items`` (all alike in G, R, momentum, eps, count and
    layout)."""
    decay = (1.0 - momentum) ** repeats
    weights = [(1.0 - decay) * decay ** (groups - 1 - g) for g in range(groups)]
    coef = _coefficients(tuple(weights), dtype, device)
    modules = [bn for item in items for bn in item.bns]
    sizes = [bn.running_mean.numel() for bn in modules]
    means, invstds = _stacked(items, groups, in_channels, device)
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
    in_channels: bool = False,
) -> None:
    """Owe E modules ``bns`` (C channels each) the statistics of G groups, each recorded ``repeats`` times.

    ``means``/``invstds``: G tensors ``[E·C]`` (``[C]`` with ``shared``: one normalisation recorded by every
    module), group order = call order: the batch means and ``1/sqrt(biased variance + eps)`` as
    ``torch.native_batch_norm`` returns them, over ``count`` values per channel; with ``in_channels``, one
    tensor ``[G·E·C]`` (``[G·C]``) each, the groups side by side (one call on channel groups). Applied now,
    or when the enclosing :func:`batched_running_stats` ends.
    """
    item = _Item(bns, list(means), list(invstds), shared, in_channels)
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
