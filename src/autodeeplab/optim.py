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


def load_optimizer_state(optimizer: torch.optim.Optimizer, state: dict) -> None:
    """``optimizer.load_state_dict(state)`` keeping this optimizer's own ``fused``/``foreach`` choice.

    A checkpoint records the implementation flags of the machine that wrote it; resuming elsewhere (a
    GPU run resumed on a CPU with an older torch, or the reverse) must use what works here. The update
    rule is the same either way (the fused kernel may round a last bit differently).
    """
    flags = [{key: group.get(key) for key in ("fused", "foreach")} for group in optimizer.param_groups]
    optimizer.load_state_dict(state)
    for group, own in zip(optimizer.param_groups, flags, strict=True):
        group.update(own)
