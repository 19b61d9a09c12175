"""Choosing the compute device from a setting string."""

from __future__ import annotations

import torch

from autodeeplab.errors import ConfigError


def resolve_device(name: str) -> torch.device:
    """``auto`` → CUDA when available, else CPU; ``cpu``; ``cuda[:i]`` (a config error without CUDA)."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device: {name!r} requested but CUDA is not available")
    try:
        return torch.device(name)
    except RuntimeError:
        raise ConfigError(f"device: unknown device {name!r} (use auto, cpu or cuda[:i])") from None
