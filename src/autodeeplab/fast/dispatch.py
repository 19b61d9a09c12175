"""Counting what a step asks of the device: operator dispatches, kernels, host synchronisations, FLOPs.

On a GPU each operator that computes something is at least one kernel launch of a few microseconds, so a
step's launch count sets a floor on its time whatever the batch. The count is exact and the same on any
device (the operators below autograd, forward and backward, seen by a ``TorchDispatchMode``), so it can be
measured on a CPU and turned into a GPU time with :func:`gpu_seconds`.

Classes of operators (:func:`op_class`):

- ``view``: aliases of existing storage (``view``, ``expand``, ``transpose``, ``detach``, ...): no kernel;
- ``alloc``: allocation or metadata only (``empty``, ``empty_strided``, ``set_``, ...): no kernel;
- ``sync``: operators whose result the host must wait for (``.item()``, ``nonzero``, ...): a kernel and a
  stall of the launch queue;
- ``kernel``: everything else: at least one kernel.

Backend choices differ slightly between devices (e.g. cuDNN's batch norm against the native one); the counts
are those of the device they were taken on.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode

_ALLOC = {
    "aten::empty",
    "aten::empty_strided",
    "aten::empty_like",
    "aten::new_empty",
    "aten::new_empty_strided",
    "aten::set_",
    "aten::resize_",
    "aten::lift_fresh",
    "aten::sym_size",
    "aten::sym_stride",
    "aten::sym_numel",
    "aten::sym_storage_offset",
    "aten::is_contiguous",
    "aten::promote_types",
    "aten::result_type",
}
_SYNC = {"aten::_local_scalar_dense", "aten::equal", "aten::is_nonzero"}
_MASKABLE = {"aten::index", "aten::index_put", "aten::index_put_", "aten::_index_put_impl_"}
"""Indexing whose output shape depends on the data only when an index is a boolean mask."""


def _has_mask(args: tuple) -> bool:
    for arg in args:
        items = arg if isinstance(arg, (list, tuple)) else [arg]
        if any(isinstance(t, torch.Tensor) and t.dtype in (torch.bool, torch.uint8) for t in items):
            return True
    return False


def op_class(func: torch._ops.OpOverload, args: tuple = ()) -> str:
    """``view``, ``alloc``, ``sync`` or ``kernel`` (module docstring) of ``func`` called with ``args``."""
    name = func._schema.name
    if name in _MASKABLE:
        return "sync" if _has_mask(args[1:]) else "kernel"
    if name in _SYNC or torch.Tag.dynamic_output_shape in func.tags:
        return "sync"
    if func.is_view or torch.Tag.inplace_view in func.tags:
        return "view"
    if name in _ALLOC:
        return "alloc"
    return "kernel"


@dataclass
class DispatchCounts:
    """Operator calls of one measured piece of work, by class and by operator name."""

    by_op: Counter = field(default_factory=Counter)
    by_class: Counter = field(default_factory=Counter)
    flops: int = 0
    """Floating-point operations of convolutions and matrix products (2 per multiply-add), forward and
    backward, from :class:`torch.utils.flop_counter.FlopCounterMode`."""

    @property
    def total(self) -> int:
        return sum(self.by_class.values())

    @property
    def kernels(self) -> int:
        """Operators that launch work on the device (``kernel`` and ``sync``)."""
        return self.by_class["kernel"] + self.by_class["sync"]

    @property
    def syncs(self) -> int:
        return self.by_class["sync"]

    def summary(self) -> dict[str, Any]:
        """JSON-ready: the totals and every operator's count, most called first."""
        return {
            "dispatches": self.total,
            "kernels": self.kernels,
            "views": self.by_class["view"],
            "allocs": self.by_class["alloc"],
            "syncs": self.syncs,
            "gflop": round(self.flops / 1e9, 3),
            "ops": dict(self.by_op.most_common()),
        }


class _Counter(TorchDispatchMode):
    def __init__(self, counts: DispatchCounts) -> None:
        super().__init__()
        self.counts = counts

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.counts.by_op[func._schema.name.removeprefix("aten::")] += 1
        self.counts.by_class[op_class(func, args)] += 1
        return func(*args, **(kwargs or {}))


_CONV_BACKWARD = torch.ops.aten.convolution_backward


def _conv_backward_flops(grad_out_shape, x_shape, w_shape, _bias, _stride, _padding, _dilation, transposed,
                         _output_padding, _groups, output_mask, out_shape=None, **kwargs) -> int:  # fmt: skip
    """FLOPs of ``convolution_backward``: each gradient asked for (input, weight) costs what the forward
    convolution costs. torch's own formula (2.13) counts a grouped convolution's weight gradient as if
    ungrouped, ``groups`` times too many: a depthwise 200-channel 3×3 weight gradient at 2×17² came to
    416 MFLOP instead of 2.1."""
    from torch.utils.flop_counter import conv_flop_count

    forward = conv_flop_count(list(x_shape), list(w_shape), list(grad_out_shape), transposed)
    return forward * (int(output_mask[0]) + int(output_mask[1]))


def count_dispatches(work: Callable[[], Any], flops: bool = True) -> DispatchCounts:
    """Run ``work()`` once and count every operator it dispatches (forward, backward and optimizer alike;
    the autograd engine carries the mode into the backward)."""
    counts = DispatchCounts()
    if flops:
        from torch.utils.flop_counter import FlopCounterMode

        flop_mode = FlopCounterMode(display=False, custom_mapping={_CONV_BACKWARD: _conv_backward_flops})
        with flop_mode, _Counter(counts):
            work()
        counts.flops = int(flop_mode.get_total_flops())
    else:
        with _Counter(counts):
            work()
    return counts


DEFAULT_LAUNCH_SECONDS = 7.3e-6
"""Seconds per kernel in the floor model: one eager ``add_`` (host dispatch and launch, the least an eager
operator costs), 7.29 µs calibrated on an NVIDIA H200's host (torch 2.11, 2026-12-04;
``benchmarks/bench_dispatch.py --device cuda --calibrate``, run by ``benchmarks/gpu_check.sh``; record in
``benchmarks/results_dispatch_gpu.jsonl``). Not what a kernel costs inside a replayed CUDA graph, nor what
an eager supernet operator costs with autograd (~34 µs measured there). Other GPUs and hosts differ."""
DEFAULT_FLOP_RATE = 51e12
"""FLOP/s of float32 convolutions and matrix products: 51.0 TFLOP/s, an fp32 matmul on the same H200."""


def gpu_seconds(
    counts: DispatchCounts,
    launch_seconds: float = DEFAULT_LAUNCH_SECONDS,
    flop_rate: float = DEFAULT_FLOP_RATE,
) -> float:
    """A floor model of a GPU step: every kernel pays one launch, the FLOPs run at ``flop_rate``, and the
    two add up (launches are not hidden behind arithmetic: true when kernels are small, as in a supernet
    at search size). Memory-bound element-wise work is not modelled (it is in the launch term only)."""
    return counts.kernels * launch_seconds + counts.flops / flop_rate
