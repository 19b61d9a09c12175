"""Custom autograd functions under autocast: their operands cast as autocast casts a convolution's."""

from __future__ import annotations

import torch


def autocast_dtype(device_type: str) -> torch.dtype | None:
    """The dtype autocast runs a convolution in on ``device_type`` now, or None when autocast is off."""
    if hasattr(torch, "get_autocast_dtype"):  # torch >= 2.4
        return torch.get_autocast_dtype(device_type) if torch.is_autocast_enabled(device_type) else None
    if device_type == "cpu":
        return torch.get_autocast_cpu_dtype() if torch.is_autocast_cpu_enabled() else None
    return torch.get_autocast_gpu_dtype() if torch.is_autocast_enabled() else None


def apply_like_autocast_conv(function: type[torch.autograd.Function], *args):
    """``function.apply(*args)`` the way autocast runs a convolution: floating tensor arguments cast to
    the autocast dtype, the function itself run with autocast off. A custom function's backward runs
    without autocast, so operands of mixed dtypes inside it would not match."""
    tensors = [a for a in args if isinstance(a, torch.Tensor)]
    dtype = autocast_dtype(tensors[0].device.type) if tensors else None
    if dtype is None:
        return function.apply(*args)
    cast = [a.to(dtype) if isinstance(a, torch.Tensor) and a.is_floating_point() else a for a in args]
    with torch.autocast(tensors[0].device.type, enabled=False):
        return function.apply(*cast)
