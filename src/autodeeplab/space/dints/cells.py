"""DiNTS cells: an edge between depths (down ×2, same, up ×2) followed by a mix of candidate ops.

Every op maps ``[N, C, *S]`` to ``[N, C, *S]`` and is ``activation → conv → norm`` (MONAI's order, DiNTS
§3.1): ``skip_connect`` (identity), ``conv_3x3x3`` (2D: ``conv_3x3``), and the pseudo-3D pairs
``conv_3x3x1`` / ``conv_3x1x3`` / ``conv_1x3x3``: a 2D kernel in one plane, then a 1D kernel along the
remaining axis (``conv_3x3x1`` is 3×3×1 then 1×1×3), no norm between them. The name gives the kernel along
``D, H, W`` of ``[N, C, D, H, W]``.

An edge first brings its input to the output depth's resolution and width: a down edge (depth ``d - 1`` to
``d``, channels ``c/2 → c``) is a factorised reduction (ReLU, two 1×1 stride-2 convolutions, the second on
the input shifted by one voxel along every axis, their outputs concatenated, norm); an up edge (``d + 1`` to
``d``, ``2c → c``) resizes to the target size (linear, corners aligned), then ReLU → 1×1 conv → norm; a
same-depth edge passes its input on.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.checkpoint import checkpoint

from autodeeplab.ops.primitives import build_op, conv_nd, resize
from autodeeplab.space.dints.arch import AUTODEEPLAB_OPS, OP_SETS

NORMS = ("instance", "batch")


def norm_nd(kind: str, channels: int, dims: int) -> nn.Module:
    """Instance norm with affine parameters (DiNTS's, fit for batches of one or two volumes) or batch norm."""
    if kind not in NORMS:
        raise ValueError(f"norm must be one of {', '.join(NORMS)}, got {kind!r}")
    if kind == "instance":
        return (nn.InstanceNorm2d if dims == 2 else nn.InstanceNorm3d)(channels, affine=True)
    return (nn.BatchNorm2d if dims == 2 else nn.BatchNorm3d)(channels)


def _kernel_pair(name: str) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """``conv_3x3x1`` → ``((3, 3, 1), (1, 1, 3))``: a 2D kernel, then a 1D one along the axis it left out."""
    first = tuple(int(k) for k in name.removeprefix("conv_").split("x"))
    return first, tuple(3 if k == 1 else 1 for k in first)


def _conv(c: int, kernel: tuple[int, ...], dims: int) -> nn.Module:
    return conv_nd(dims)(c, c, kernel, padding=tuple(k // 2 for k in kernel), bias=False)


def build_dints_op(name: str, channels: int, dims: int, norm: str = "instance") -> nn.Module:
    """One candidate op for ``dims`` (2 or 3), shapes kept: of DiNTS's op set, or one of Auto-DeepLab's
    primitives (``ops.primitives.build_op``, stride 1, its own batch norm whatever ``norm``)."""
    names = OP_SETS[f"dints-{dims}d"]
    if name in AUTODEEPLAB_OPS and name not in names:
        return build_op(name, channels, stride=1, affine=True, dims=dims)
    if name not in names:
        raise ValueError(f"unknown DiNTS op {name!r} for {dims}D (choose from {', '.join(names)})")
    if name == "skip_connect":
        return nn.Identity()
    full = (3,) * dims
    first, second = _kernel_pair(name) if dims == 3 and name != "conv_3x3x3" else (full, None)
    convs = [_conv(channels, first, dims)] + ([_conv(channels, second, dims)] if second else [])
    return nn.Sequential(nn.ReLU(), *convs, norm_nd(norm, channels, dims))


class FactorizedReduce(nn.Module):
    """Down edge: ``[N, c_in, *S]`` → ``[N, c_out, *ceil(S / 2)]`` (two offset 1×1 stride-2 convs)."""

    def __init__(self, c_in: int, c_out: int, dims: int, norm: str) -> None:
        super().__init__()
        conv = conv_nd(dims)
        self.first = conv(c_in, c_out // 2, 1, bias=False)  # on the even voxels: a stride-2 1×1 conv
        self.second = conv(c_in, c_out - c_out // 2, 1, bias=False)
        self.norm = norm_nd(norm, c_out, dims)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dims = x.dim() - 2
        # A 1×1 stride-2 conv reads only the even voxels: take them first (the ReLU commutes with the
        # subsampling), so that the backward keeps 1/2^dims of the input instead of all of it. The shifted
        # copy is the odd voxels (x shifted by one along every axis), zero-padded at the end to ceil(S/2).
        even = F.relu(x[(..., *[slice(0, None, 2)] * dims)])
        odd = x[(..., *[slice(1, None, 2)] * dims)]
        missing = [n - m for n, m in zip(even.shape[2:], odd.shape[2:], strict=True)]
        odd = F.relu(F.pad(odd, [p for m in reversed(missing) for p in (0, m)]))  # padded, then one ReLU
        return self.norm(torch.cat([self.first(even), self.second(odd)], dim=1))


class FactorizedIncrease(nn.Module):
    """Up edge: ``[N, c_in, *s]`` → ``[N, c_out, *size]`` (resize, ReLU, 1×1 conv, norm)."""

    def __init__(self, c_in: int, c_out: int, dims: int, norm: str) -> None:
        super().__init__()
        self.conv = conv_nd(dims)(c_in, c_out, 1, bias=False)
        self.norm = norm_nd(norm, c_out, dims)

    def forward(self, x: torch.Tensor, size: tuple[int, ...]) -> torch.Tensor:
        return self.norm(self.conv(F.relu(resize(x, size, align_corners=True))))


def _lean_form(op: nn.Module) -> str:
    """How the lean path evaluates ``op``: ``identity`` (w·x); ``folded`` for ``ReLU → ... → norm`` (DiNTS's
    ops, Auto-DeepLab's convolutions: the ReLU shared, the weight folded into the norm); ``pair`` when the
    middle is a chain of convolutions alone, whose maps may be recomputed (a chain with a norm inside may
    not: a recomputed batch norm would update its running statistics twice); else ``reference``
    (w·op(x), e.g. a pooling primitive)."""
    if isinstance(op, nn.Identity):
        return "identity"
    norms = (nn.modules.instancenorm._InstanceNorm, nn.modules.batchnorm._BatchNorm)
    if not (isinstance(op, nn.Sequential) and isinstance(op[0], nn.ReLU) and isinstance(op[-1], norms)):
        return "reference"
    if not op[-1].affine:
        return "reference"
    middle = list(op)[1:-1]
    return (
        "pair"
        if len(middle) > 1 and all(isinstance(m, nn.modules.conv._ConvNd) for m in middle)
        else "folded"
    )


def _middle(op: nn.Sequential, h: torch.Tensor) -> torch.Tensor:
    """``op`` between its leading ReLU and its closing norm, applied to ``h`` (already through the ReLU)."""
    for module in list(op)[1:-1]:
        h = module(h)
    return h


def scaled_norm(norm: nn.Module, y: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """``scale · norm(y)`` with ``scale`` folded into the affine parameters (``[N, C, *S]``, a 0-d
    ``scale``); running statistics (batch norm) are updated exactly as ``norm(y)`` would."""
    weight, bias = norm.weight * scale, norm.bias * scale
    if isinstance(norm, nn.modules.instancenorm._InstanceNorm):
        if norm.track_running_stats:
            raise ValueError("scaled_norm: instance norm with running statistics is not supported")
        return F.instance_norm(y, None, None, weight, bias, True, norm.momentum or 0.0, norm.eps)
    # Batch norm: nn.BatchNorm's own bookkeeping (momentum, or a cumulative average when it is None).
    factor = 0.0 if norm.momentum is None else norm.momentum
    if norm.training and norm.track_running_stats:
        norm.num_batches_tracked.add_(1)
        if norm.momentum is None:
            factor = 1.0 / float(norm.num_batches_tracked)
    batch_stats = norm.training or norm.running_mean is None
    running = (
        (None, None)
        if norm.training and not norm.track_running_stats
        else (
            norm.running_mean,
            norm.running_var,
        )
    )
    return F.batch_norm(y, *running, weight, bias, batch_stats, factor, norm.eps)


class EdgeCell(nn.Module):
    """One edge of a block: resample from depth ``source`` to ``target``, then ``Σ_k w_k op_k``.

    ``ops`` names the candidates (all of an op set during the search, the one chosen in a found network).
    ``forward(x [N, c_source, *s], size, weights [K] or None)`` → ``[N, c_target, *size]``.
    """

    def __init__(
        self,
        source: int,
        target: int,
        channels: Callable[[int], int],
        ops: tuple[str, ...],
        dims: int,
        norm: str = "instance",
    ) -> None:
        super().__init__()
        if abs(source - target) > 1:
            raise ValueError(f"an edge joins neighbouring depths, got {source} -> {target}")
        c_in, c_out = channels(source), channels(target)
        self.direction = target - source  # +1 down (deeper), -1 up, 0 same
        if self.direction > 0:
            self.resample: nn.Module | None = FactorizedReduce(c_in, c_out, dims, norm)
        elif self.direction < 0:
            self.resample = FactorizedIncrease(c_in, c_out, dims, norm)
        else:
            self.resample = None
        self.ops = nn.ModuleList(build_dints_op(name, c_out, dims, norm) for name in ops)
        self.forms = [_lean_form(op) for op in self.ops]
        self.lean, self.recompute = True, True
        """With weights (the supernet): the lean path (shared ReLU, weights folded into the norms; equal to
        the reference ``Σ_k w_k op_k(x)`` up to rounding, tested) or, False, the reference itself;
        ``recompute``: in the lean path, recompute the pseudo-3D pairs' middle maps in the backward."""

    def forward(
        self, x: torch.Tensor, size: tuple[int, ...], weights: torch.Tensor | None = None
    ) -> torch.Tensor:
        if self.direction < 0:
            x = self.resample(x, size)  # type: ignore[misc]
        elif self.direction > 0:
            x = self.resample(x)  # type: ignore[misc]
        if weights is None:
            return sum(op(x) for op in self.ops)  # a found network: one op
        if not self.lean:
            return sum(w * op(x) for w, op in zip(weights, self.ops, strict=True))
        # The supernet's lean path, the same sum: one ReLU for every op of the edge (each op starts with
        # the same ReLU), each weight folded into its op's norm (w·(γ·x̂ + β) = (w·γ)·x̂ + w·β), so that
        # neither the op outputs nor the weighted sum are kept for the weights' gradients, and the middle
        # maps of the pseudo-3D pairs recomputed in the backward.
        h, out = F.relu(x), None
        for w, op, form in zip(weights, self.ops, self.forms, strict=True):
            if form == "identity":
                y = w * x
            elif form == "reference":
                y = w * op(x)  # e.g. a pooling primitive
            elif form == "pair" and self.recompute and torch.is_grad_enabled():
                # Recompute the pair's middle map in the backward rather than keep it (from h, which is
                # kept anyway); deterministic, so the gradients are the same numbers.
                y = scaled_norm(op[-1], checkpoint(_middle, op, h, use_reentrant=False), w)
            else:
                y = scaled_norm(op[-1], _middle(op, h), w)
            out = y if out is None else out + y
        return out
