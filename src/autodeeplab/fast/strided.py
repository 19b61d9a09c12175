"""A copy of a strided view of a tensor into a new layout in two dispatches (issue 16).

Moving a node's channel groups to the batch axis and back (:mod:`autodeeplab.fast.channel_groups`) and
repeating a state per edge (:mod:`autodeeplab.fast.depthwise`) are copies between two strided views of the
same values. Written as ``torch.empty`` + a view of the result + a view of the source + ``copy_``, each is
four dispatches; ``torch.as_strided_copy`` of the source view, listed in the result's memory order, writes
the new tensor in one kernel, and one ``as_strided`` gives it its shape: two dispatches (and on this CPU
1.5–2.5× faster for the small maps of a search).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


def layout_strides(shape: Sequence[int], memory_format: torch.memory_format) -> tuple[int, ...]:
    """The strides of a dense ``[N, C, *S]`` tensor of ``shape`` laid out in ``memory_format``
    (``torch.contiguous_format``, ``torch.channels_last`` or ``torch.channels_last_3d``)."""
    dims = len(shape)
    order = range(dims) if memory_format == torch.contiguous_format else (0, *range(2, dims), 1)
    strides, step = [0] * dims, 1
    for d in reversed(tuple(order)):  # innermost first
        strides[d] = step
        step *= shape[d]
    return tuple(strides)


def copy_in_order(
    x: torch.Tensor,
    size: Sequence[int],
    stride: Sequence[int],
    order: Sequence[int],
    shape: Sequence[int],
    memory_format: torch.memory_format,
) -> torch.Tensor:
    """A new ``shape`` tensor in ``memory_format`` holding the values of the view
    ``x.as_strided(size, stride, x.storage_offset())``, whose dims ``order`` lists in the new tensor's
    memory order (outermost first): the view's values, read in that order, are the new tensor's memory."""
    size, stride = tuple(size[d] for d in order), tuple(stride[d] for d in order)
    flat = torch.as_strided_copy(x, size, stride, x.storage_offset())  # contiguous
    return flat.as_strided(tuple(shape), layout_strides(shape, memory_format))
