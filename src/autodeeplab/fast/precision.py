"""Mixed precision for the search steps: autocast to bf16/fp16 and, for fp16, a gradient scaler.

``bf16`` has fp32's exponent range, so it needs no loss scaling and works on CPUs and GPUs alike; ``fp16``
(GPU only) needs a :class:`torch.amp.GradScaler` per optimizer so that small gradients do not flush to
zero. The scalers live here, keyed by optimizer, so that the step functions keep their signatures.
"""

from __future__ import annotations

import contextlib
import weakref
from collections.abc import Callable, Iterable

import torch
from torch import nn

AUTOCAST_DTYPES: dict[str, torch.dtype] = {"bf16": torch.bfloat16, "fp16": torch.float16}

_SCALERS: weakref.WeakKeyDictionary[torch.optim.Optimizer, torch.amp.GradScaler] = weakref.WeakKeyDictionary()


def autocast(precision: str, device_type: str) -> contextlib.AbstractContextManager:
    """The autocast context for ``precision`` (``fp32``: none) on ``device_type``."""
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type, dtype=AUTOCAST_DTYPES[precision])


def grad_scaler(optimizer: torch.optim.Optimizer, device_type: str) -> torch.amp.GradScaler:
    """The gradient scaler of ``optimizer`` (made on first use; fp16 only)."""
    if optimizer not in _SCALERS:
        _SCALERS[optimizer] = torch.amp.GradScaler(device_type)
    return _SCALERS[optimizer]


def backward_and_step(
    loss: torch.Tensor,
    optimizer: torch.optim.Optimizer,
    precision: str,
    device_type: str,
    clip_parameters: Iterable[nn.Parameter] = (),
    grad_clip: float = 0.0,
    after_backward: Callable[[], None] | None = None,
) -> None:
    """``loss.backward()``, optional gradient-norm clipping of ``clip_parameters``, ``optimizer.step()``.

    With ``fp16`` the loss is scaled for the backward and the gradients unscaled before clipping; a step
    whose gradients overflowed is skipped and the scale lowered (standard dynamic loss scaling).
    ``after_backward``: called between the backward and the clipping, e.g. the gradients averaged over the
    ranks. With fp16 it sees the still-scaled gradients: an overflow on any rank is then inf or nan on every
    rank after the average, so every rank skips the same steps and keeps the same loss scale.
    """
    if precision != "fp16":
        loss.backward()
        if after_backward is not None:  # e.g. the gradients averaged over the ranks, before clipping
            after_backward()
        if grad_clip > 0:
            nn.utils.clip_grad_norm_(list(clip_parameters), grad_clip)
        optimizer.step()
        return
    scaler = grad_scaler(optimizer, device_type)
    scaler.scale(loss).backward()
    if after_backward is not None:
        after_backward()
    if grad_clip > 0:
        scaler.unscale_(optimizer)
        nn.utils.clip_grad_norm_(list(clip_parameters), grad_clip)
    scaler.step(optimizer)
    scaler.update()


def scaler_states(optimizers: dict[str, torch.optim.Optimizer]) -> dict[str, dict]:
    """The state of each optimizer's gradient scaler that exists (fp16 runs), for a checkpoint."""
    return {name: _SCALERS[opt].state_dict() for name, opt in optimizers.items() if opt in _SCALERS}


def load_scaler_states(
    optimizers: dict[str, torch.optim.Optimizer], states: dict[str, dict], device_type: str
) -> None:
    """Restore the scalers saved by :func:`scaler_states` (resume continues with the same loss scale)."""
    for name, state in states.items():
        grad_scaler(optimizers[name], device_type).load_state_dict(state)
