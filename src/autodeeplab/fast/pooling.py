"""Max pooling that keeps its input, not its argmax, for the backward (``pool_without_indices``).

Speed code of the exact fast path (:mod:`autodeeplab.fast.cell`, :mod:`autodeeplab.fast.fused_edges`): the
same values and gradients as the pool module, fewer bytes held between forward and backward.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.nn import functional as F


class _MaxPoolSavingInput(torch.autograd.Function):
    """Max pool whose backward recomputes the argmax instead of keeping it.

    The native op keeps an int64 index tensor (twice the bytes of an fp32 output) alive until the
    backward; its input is kept anyway (by the other ops that read the same state), so recomputing the
    indices from it in the backward costs one cheap pool and saves those bytes. Gradients are identical.
    """

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, kernel: int, stride: int, padding: int) -> torch.Tensor:
        dims = x.dim() - 2
        ctx.save_for_backward(x)
        ctx.args = ([kernel] * dims, [stride] * dims, [padding] * dims, [1] * dims)
        pool = F.max_pool2d if dims == 2 else F.max_pool3d
        return pool(x, kernel, stride, padding)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None, None, None]:
        (x,) = ctx.saved_tensors
        kernel, stride, padding, dilation = ctx.args
        # under autocast the gradient can come back in float32 for a bfloat16 pool (seen in 3D); the
        # native backward wants its input's dtype, which is what autograd hands the native pool
        grad = grad.to(x.dtype)
        if x.dim() == 4:
            _, idx = F.max_pool2d(x, kernel, stride, padding, return_indices=True)
            backward = torch.ops.aten.max_pool2d_with_indices_backward
        else:
            _, idx = F.max_pool3d(x, kernel, stride, padding, return_indices=True)
            backward = torch.ops.aten.max_pool3d_with_indices_backward
        return backward(grad, x, kernel, stride, padding, dilation, False, idx), None, None, None


def max_pool_saving_input(x: torch.Tensor, pool: nn.Module) -> torch.Tensor:
    """Apply max-pool module ``pool`` to ``[N, C, *S]`` without keeping indices for the backward.

    Same values and gradients as ``pool(x)``; 2D and 3D pools only (others are applied as they are).
    """
    square = all(isinstance(v, int) for v in (pool.kernel_size, pool.stride, pool.padding, pool.dilation))
    if x.dim() not in (4, 5) or pool.ceil_mode or not square or pool.dilation != 1:
        return pool(x)  # the package's pools are square, undilated and floor-mode; anything else as it is
    return _MaxPoolSavingInput.apply(x, pool.kernel_size, pool.stride, pool.padding)
