"""SGD with the fastest step the installed torch offers for the parameters' device.

The search supernet has ~9,500 weight tensors (F=8, L=12). torch's default SGD on CPU updates them one
Python-level loop iteration at a time (weight decay, momentum buffer, parameter: three kernels each), a
fifth of a second per step. The fused kernel (CPU since torch 2.4, CUDA) does the same three updates in
one pass per tensor: on this project's 2-core machine the supernet's SGD step went from 197 to 116 ms
(a one-off timing; benchmarks/README, "latest series"). The arithmetic is the loop's, but not always
bit for bit: a few small tensors differ in the last bit (``tests/test_optim.py`` compares within float
tolerance). ``fused=False`` gives the loop; so does a torch without fused SGD for the device.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch


def sgd(params: Iterable[Any], fused: bool = True, **options: Any) -> torch.optim.SGD:
    """``torch.optim.SGD(params, **options)``, fused where supported (unless ``fused=False``).

    ``params``: parameters or parameter-group dicts, as for ``torch.optim.SGD``.
    """
    params = list(params)
    if fused:
        try:
            return torch.optim.SGD(params, fused=True, **options)
        except (RuntimeError, TypeError):  # no fused kernel for this device or torch version
            pass
    return torch.optim.SGD(params, **options)


IMPLEMENTATION_FLAGS = ("fused", "foreach", "capturable")
"""Optimizer options that choose how a step runs, not what it computes: this run's own are kept when a
checkpoint is loaded."""


def load_optimizer_state(optimizer: torch.optim.Optimizer, state: dict) -> None:
    """``optimizer.load_state_dict(state)`` keeping this optimizer's own ``fused``/``foreach``/``capturable``
    choice, with every state tensor where and how this optimizer's step needs it.

    A checkpoint records the implementation flags of the machine that wrote it; resuming elsewhere (a
    GPU run resumed on a CPU with an older torch, or the reverse; a search with captured steps resumed
    without them) must use what works here. The update rule is the same either way (the fused kernel may
    round a last bit differently).
    """
    flags = [
        {key: group[key] for key in IMPLEMENTATION_FLAGS if key in group} for group in optimizer.param_groups
    ]
    optimizer.load_state_dict(state)
    for group, own in zip(optimizer.param_groups, flags, strict=True):
        group.update(own)
    _fit_loaded_state(optimizer)


def _fit_loaded_state(optimizer: torch.optim.Optimizer) -> None:
    """Put each loaded state tensor where and how this optimizer's step reads it.

    - Adam's ``step`` counters: on the parameter's device as float32 when the group is ``capturable`` or
      ``fused``, else on the CPU. That is torch's own placement, but ``load_state_dict`` applies it with
      the checkpoint's flags, not this optimizer's (a capturable GPU run resumed on a CPU stopped with an
      assertion at its first architecture step).
    - Per-element tensors (momentum, Adam's moments): their parameter's memory layout. The fused kernels
      read a parameter, its gradient and its state as flat arrays, so a buffer laid out otherwise than its
      parameter is updated element against the wrong element, silently (seen on the CPU: a channels-last
      parameter with a contiguous buffer moved by up to 0.7 in one step). A gradient always has its
      parameter's layout (``AccumulateGrad`` makes it so) and a buffer the optimizer makes copies the
      gradient's, but a loaded buffer keeps the layout it was saved in: a 3D network trains channels-last
      on a CPU and contiguous on a GPU, and a run may resume on the other.
    """
    for group in optimizer.param_groups:
        on_device = group.get("capturable", False) or group.get("fused", False)
        for p in group["params"]:
            state = optimizer.state.get(p, {})
            for key, value in state.items():
                if not torch.is_tensor(value):
                    continue
                if key == "step":
                    state[key] = value.to(dtype=torch.float32, device=p.device) if on_device else value.cpu()
                elif value.shape == p.shape and value.stride() != p.stride():
                    state[key] = torch.empty_like(p, dtype=value.dtype).copy_(value)
