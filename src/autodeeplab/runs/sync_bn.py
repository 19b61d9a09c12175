"""Batch norm over the global batch of a distributed run (issue 15, ``sync_bn``).

Without it each rank normalises its own ``b / world`` samples: the statistics, and so the result, depend on
how the global batch is split. With it every rank normalises with the mean and variance of the whole
global batch, as one process with that batch would.

On CUDA this is torch's :class:`torch.nn.SyncBatchNorm` (fused kernels). torch's refuses CPU tensors, so on
CPU (gloo) :class:`AllReduceBatchNorm` does the same with two differentiable all-reduces per layer: the
per-channel sums and counts, then the sums of squared deviations from the global mean (two passes: no
``E[x²] − E[x]²`` cancellation). Autograd carries the gradient through the all-reduces, so the gradient
is the global batch's too. Evaluation mode uses the running statistics as always.
"""

from __future__ import annotations

import torch
from torch import distributed as dist
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm


class _SumOverRanks(torch.autograd.Function):
    """``x`` summed over the ranks; its gradient is the incoming gradients summed over the ranks (every
    rank's loss depends on every rank's ``x`` through the sum)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        out = x.clone()
        dist.all_reduce(out)
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:  # noqa: D102
        out = grad.clone()
        dist.all_reduce(out)
        return out


def summed_with_grad(x: torch.Tensor) -> torch.Tensor:
    """Differentiable all-reduce (sum) of ``x`` over the default process group (same shape)."""
    return _SumOverRanks.apply(x)


class AllReduceBatchNorm(_BatchNorm):
    """:class:`torch.nn.BatchNorm2d` semantics (any spatial dims) with training statistics over every rank.

    Input ``[N, C, *S]``; output the same shape. Running statistics follow torch's rule (momentum, or the
    cumulative average when ``momentum`` is None; the running variance is the unbiased one of the global
    batch), so every rank keeps the same running statistics.
    """

    def _check_input_dim(self, input: torch.Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(f"expected input [N, C, ...], got {input.dim()} dimensions")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check_input_dim(x)
        if not self.training or not dist.is_initialized() or dist.get_world_size() == 1:
            return super().forward(x)
        dtype, x = x.dtype, x.float()  # statistics in float32 whatever the autocast (as torch's BN)
        c = x.shape[1]
        dims = [0, *range(2, x.dim())]
        local = torch.cat([x.sum(dims), x.new_full((1,), x.numel() // c)])
        total = summed_with_grad(local)
        count = total[c].detach()
        if float(count) < 2:
            raise ValueError("Expected more than 1 value per channel when training (over every rank)")
        view = (1, c) + (1,) * (x.dim() - 2)
        mean = total[:c] / count
        centred = x - mean.view(view)
        var = (
            summed_with_grad((centred * centred).sum(dims)) / count
        )  # biased: what the batch is normalised by
        out = centred * torch.rsqrt(var + self.eps).view(view)
        if self.affine:
            out = out * self.weight.view(view) + self.bias.view(view)
        if self.track_running_stats:
            self._update_running_stats(mean.detach(), var.detach(), count)
        return out.to(dtype)

    @torch.no_grad()
    def _update_running_stats(self, mean: torch.Tensor, var: torch.Tensor, count: torch.Tensor) -> None:
        self.num_batches_tracked += 1
        factor = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
        unbiased = var * count / (count - 1)
        self.running_mean.mul_(1 - factor).add_(mean.to(self.running_mean.dtype), alpha=factor)
        self.running_var.mul_(1 - factor).add_(unbiased.to(self.running_var.dtype), alpha=factor)


def convert_sync_batch_norm(model: nn.Module, device_type: str) -> nn.Module:
    """``model`` with every batch norm replaced by one over the global batch (weights and running statistics
    kept): :class:`torch.nn.SyncBatchNorm` on CUDA, :class:`AllReduceBatchNorm` elsewhere."""
    if device_type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(model)
    return _replace(model)


def _replace(module: nn.Module) -> nn.Module:
    if isinstance(module, _BatchNorm) and not isinstance(module, AllReduceBatchNorm | nn.SyncBatchNorm):
        new = AllReduceBatchNorm(
            module.num_features, module.eps, module.momentum, module.affine, module.track_running_stats
        )
        # the same parameter and buffer tensors, not copies: optimisers and cached parameter lists made
        # before the conversion (a search space's weight_parameters) keep pointing at what the BN uses
        if module.affine:
            new.weight, new.bias = module.weight, module.bias
        for name in ("running_mean", "running_var", "num_batches_tracked"):
            setattr(new, name, getattr(module, name))
        new.train(module.training)
        return new
    for name, child in module.named_children():
        replaced = _replace(child)
        if replaced is not child:
            setattr(module, name, replaced)
    return module


def broadcast_buffers(model: nn.Module, world: int) -> None:
    """Rank 0's buffers (BN running statistics) on every rank: without ``sync_bn`` each rank's running
    statistics follow its own samples; before an evaluation or a checkpoint every rank takes rank 0's,
    the ones ``model.pt`` holds, so a distributed evaluation scores the saved model."""
    if world == 1:
        return
    for buffer in model.buffers():
        dist.broadcast(buffer, src=0)
