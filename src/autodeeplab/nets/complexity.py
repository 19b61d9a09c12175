"""Model complexity: parameter count and multiply-adds (paper Table 2's "Params" and "Multi-Adds").

How we count:

- **Parameters**: every element of ``model.parameters()`` — conv weights and biases, BN scale and
  shift. BN running statistics are buffers, not parameters, and are not counted (TensorFlow does not
  count its moving averages as trainable variables either).
- **Multiply-adds**: convolutions and linear layers only, one multiply-add per weight per output
  position: a convolution costs ``N · prod(out_spatial) · C_out · (C_in / groups) · prod(kernel)``, a
  linear layer ``rows · in · out``. Biases, BN, ReLU, pooling, additions, concatenations and
  bilinear resizes are not counted (they are a fraction of a percent of the total here). Zero-padded
  taps of a convolution are counted like the others, as a dense convolution would compute them.
  The count is exact for the given input shape: forward hooks read the real output shapes.

Against the paper's Table 2 (paper genotype, 19 classes; ``autodeeplab info --variant S|M|L``):

=========  ==================  =============  =====================  ===============
variant    parameters (ours)   paper          multiply-adds (ours)   paper
=========  ==================  =============  =====================  ===============
S (F=20)   10,147,171          10.15M         317.54B (-4.7%)        333.25B
M (F=32)   21,622,195          21.62M         434.99B (-5.6%)        460.93B
L (F=48)   44,424,435          44.42M         653.58B (-6.0%)        695.03B
=========  ==================  =============  =====================  ===============

The parameter counts agree to the paper's printed precision. The multiply-adds are 4.7–6.0% lower;
the gap (15.7B / 25.9B / 41.4B) grows about linearly with F (0.79 / 0.81 / 0.86 B per unit of F), so
it is not in the decoder (whose cost barely depends on F); counting one multiply-add per BN and ReLU
output element would add only 1.2B for S (0.50B + 0.71B), so that convention does not explain it
either. The paper does not say how it counts.

The forward runs on PyTorch's ``meta`` device (shapes only, no arithmetic, no memory for
activations) with the parameters swapped for meta tensors via ``torch.func.functional_call``, so
counting Auto-DeepLab-L at 1024×2048 takes a second on a laptop and leaves the model untouched.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn
from torch.func import functional_call

_CONV_TYPES = (nn.Conv1d, nn.Conv2d, nn.Conv3d)


def count_parameters(model: nn.Module) -> int:
    """Number of parameter elements of ``model`` (shared parameters counted once)."""
    return sum(p.numel() for p in model.parameters())


def _conv_multiply_adds(module: nn.Module, output: torch.Tensor) -> int:
    """Multiply-adds of a convolution producing ``output`` ``[N, C_out, *S_out]``."""
    weight = module.weight  # [C_out, C_in / groups, *kernel]
    per_output = math.prod(weight.shape[1:])
    return output.numel() * per_output


def _linear_multiply_adds(module: nn.Linear, output: torch.Tensor) -> int:
    """Multiply-adds of a linear layer producing ``output`` ``[..., out_features]``."""
    return output.numel() * module.in_features


def count_multiply_adds(model: nn.Module, input_shape: Sequence[int]) -> int:
    """Multiply-adds of one forward pass of ``model`` on an input of ``input_shape`` (e.g. ``[N, C, H, W]``).

    Runs in eval mode (no drop path, no dropout) on the meta device; the model's parameters, buffers
    and train/eval mode are left as they were.
    """
    return sum(multiply_adds_by_module(model, input_shape).values())


def multiply_adds_by_module(model: nn.Module, input_shape: Sequence[int]) -> dict[str, int]:
    """:func:`count_multiply_adds` per convolution / linear module, by its name in ``model`` (a module run
    twice is counted twice)."""
    counts: dict[str, int] = {}
    names = {m: name for name, m in model.named_modules()}

    def hook(module: nn.Module, _inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        if isinstance(module, _CONV_TYPES):
            macs = _conv_multiply_adds(module, output)
        else:
            macs = _linear_multiply_adds(module, output)
        counts[names[module]] = counts.get(names[module], 0) + macs

    handles = [
        m.register_forward_hook(hook) for m in model.modules() if isinstance(m, (*_CONV_TYPES, nn.Linear))
    ]
    meta_state = {
        name: torch.empty_like(t, device="meta")
        for name, t in (*model.named_parameters(), *model.named_buffers())
    }
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            functional_call(model, meta_state, (torch.empty(tuple(input_shape), device="meta"),))
    finally:
        model.train(was_training)
        for handle in handles:
            handle.remove()
    return counts


def format_count(n: int) -> str:
    """Human form of a large count: ``10147171`` → ``'10.15M'``, ``333250000000`` → ``'333.25B'``."""
    for threshold, suffix in ((10**9, "B"), (10**6, "M"), (10**3, "K")):
        if abs(n) >= threshold:
            return f"{n / threshold:.2f}{suffix}"
    return str(n)
