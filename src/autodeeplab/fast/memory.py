"""Saved-activation accounting: how many bytes autograd keeps alive between a forward and its backward.

The count is taken with :func:`torch.autograd.graph.saved_tensors_hooks`, so it is the same on a CPU and a
GPU (no allocator statistics involved) and it counts what the graph really holds, not a model of it::

    with SavedTensorCounter(exclude=model.parameters()) as counter:
        loss = criterion(model(images), masks)
    print(counter.total_bytes)

Tensors are deduplicated by storage (the output of a ReLU saved both by the ReLU and by the convolution
that reads it counts once, and so do views of one tensor); parameters and buffers passed in ``exclude``
are not activations and are left out. Activation checkpointing keeps its inputs alive without packing
them, so :func:`note_held` lets the checkpoint wrapper report them to the active counter.

While a counter is active it holds a reference to every saved tensor (so that a freed storage's address
cannot be reused and miscounted); they are released when the ``with`` block ends and the graph is gone.
"""

from __future__ import annotations

import contextvars
import resource
import sys
from collections.abc import Iterable
from dataclasses import dataclass

import torch

_ACTIVE: contextvars.ContextVar[SavedTensorCounter | None] = contextvars.ContextVar(
    "autodeeplab_saved_tensor_counter", default=None
)


@dataclass(frozen=True)
class SavedRecord:
    """One distinct storage kept for backward: its size and the shape of the tensor that owns it (the
    base of the first view seen on it, so that a permuted or flattened view still reports the
    ``[N, C, *S]`` activation it was taken from)."""

    nbytes: int
    shape: tuple[int, ...]
    dtype: torch.dtype


def _storage_key(t: torch.Tensor) -> tuple[str, int]:
    return (str(t.device), t.untyped_storage().data_ptr())


class SavedTensorCounter:
    """Context manager counting the distinct storages saved for backward while it is active.

    Args:
        exclude: tensors (parameters, buffers) whose storages are not activations.
    """

    def __init__(self, exclude: Iterable[torch.Tensor] = ()) -> None:
        self._excluded = {_storage_key(t) for t in exclude}
        self._records: dict[tuple[str, int], SavedRecord] = {}
        self._alive: list[torch.Tensor] = []
        self._hooks: torch.autograd.graph.saved_tensors_hooks | None = None
        self._token: contextvars.Token | None = None

    def add(self, t: torch.Tensor) -> None:
        """Count ``t`` (once per storage) unless it is excluded or not a real tensor."""
        if t.device.type == "meta":  # no storage to count
            return
        key = _storage_key(t)
        if key in self._excluded or key in self._records:
            return
        nbytes = t.untyped_storage().nbytes()
        owner = t._base if t._base is not None else t
        self._records[key] = SavedRecord(nbytes, tuple(owner.shape), t.dtype)
        self._alive.append(t)

    def _pack(self, t: torch.Tensor) -> torch.Tensor:
        self.add(t)
        return t

    @staticmethod
    def _unpack(t: torch.Tensor) -> torch.Tensor:
        return t

    def __enter__(self) -> SavedTensorCounter:
        self._hooks = torch.autograd.graph.saved_tensors_hooks(self._pack, self._unpack)
        self._hooks.__enter__()
        self._token = _ACTIVE.set(self)
        return self

    def __exit__(self, *exc) -> None:
        _ACTIVE.reset(self._token)
        self._hooks.__exit__(*exc)
        self._alive.clear()  # the graph keeps what it still needs

    @property
    def records(self) -> list[SavedRecord]:
        """Every distinct saved storage, in the order first seen."""
        return list(self._records.values())

    @property
    def total_bytes(self) -> int:
        """Bytes of all distinct saved storages."""
        return sum(r.nbytes for r in self._records.values())


def note_held(tensors: Iterable[object]) -> None:
    """Report tensors kept alive for a backward by other means than packing (activation checkpointing).

    A no-op unless a :class:`SavedTensorCounter` is active in this context.
    """
    counter = _ACTIVE.get()
    if counter is None:
        return
    for t in tensors:
        if isinstance(t, torch.Tensor):
            counter.add(t)


def peak_rss_bytes() -> int:
    """The process's peak resident set size so far (bytes; ``ru_maxrss`` is KiB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)


GIB = 2**30
"""Bytes in a GiB, for reports."""
