"""The building blocks of the found network: its stem, its fixed cell and scheduled drop path.

Following Google's released ``hnasnet`` (``deeplab/core/nas_network.py`` / ``nas_cell.py``), for images
(``dims=2``, ``[N, C, H, W]``) and volumes (``dims=3``, ``[N, C, D, H, W]``) alike:

- :class:`Stem`: 3×3 conv 64 stride 2 → BN → ReLU → 3×3 conv 64 → BN → ReLU → 3×3 conv 128 stride 2
  → BN. The stem output (output stride 4) is h^{0}; the second conv's BN output (output stride 2) is
  h^{-1}.
- :class:`FixedCell`: ``h^{l-1}`` → ReLU → 1×1 → BN; ``h^{l-2}`` resized to the size of ``h^{l-1}``
  (bilinear, corners aligned like the released ``resize_bilinear``) and projected only when its width
  differs; then the genotype's blocks, concatenated.
- Scheduled drop path (released model): the cell at index ``i`` of ``L`` keeps each op output with
  probability ``1 - (i+1)/L · (1 - keep_prob)``, and that drop rate grows linearly with training
  progress. One Bernoulli draw per sample and op, outputs rescaled by ``1/keep``; training mode only.
  Like the released model (whose ``none`` op is the identity), identity skips are never dropped.
"""

from __future__ import annotations

import torch
from torch import nn

from autodeeplab.ops.primitives import ALIGN_CORNERS, ReLUConvBN, batch_norm_nd, build_op, conv_nd, resize


def scheduled_keep_prob(keep_prob: float, cell_index: int, num_cells: int, progress: float) -> float:
    """Keep probability of cell ``cell_index`` (0-based, of ``num_cells``) at training ``progress`` in [0, 1].

    Deeper cells drop more: ``k_i = 1 - (i+1)/L · (1 - keep_prob)``; the drop rate ramps up linearly
    from 0 at the start of training: ``1 - progress · (1 - k_i)``.
    """
    cell_keep = 1.0 - (cell_index + 1) / num_cells * (1.0 - keep_prob)
    return 1.0 - min(max(progress, 0.0), 1.0) * (1.0 - cell_keep)


def drop_path(x: torch.Tensor, keep_prob: float) -> torch.Tensor:
    """Zero whole samples of ``x`` ``[N, C, *S]`` with probability ``1 - keep_prob``, rescale the rest."""
    if keep_prob >= 1.0:
        return x
    mask_shape = (x.shape[0],) + (1,) * (x.dim() - 1)
    mask = torch.rand(mask_shape, dtype=x.dtype, device=x.device) < keep_prob
    return x * mask.to(x.dtype) / keep_prob


class FixedCell(nn.Module):
    """One cell of the found network: ``(h^{l-2}, h^{l-1})`` → ``[N, B·filters, *S_out]``.

    ``h^{l-1}`` (``[N, c_prev, *S]``, already upsampled when the cell goes up a level) goes through
    ReLU → 1×1 → BN; ``h^{l-2}`` (``[N, c_prev_prev, *S']``) is resized to ``S`` and gets
    ReLU → 1×1 → BN only when ``c_prev_prev != filters`` (released model). With ``reduction`` the ops
    that read the two cell inputs have stride 2 (``S_out = ceil(S/2)``), ops on block outputs stride 1.
    ``dims`` is the number of spatial axes (2 or 3).
    """

    def __init__(
        self,
        cell: tuple[tuple[tuple[str, int], tuple[str, int]], ...],
        c_prev_prev: int,
        c_prev: int,
        filters: int,
        reduction: bool,
        dims: int = 2,
    ) -> None:
        super().__init__()
        self.cell = cell
        self.pre_prev = ReLUConvBN(c_prev, filters, 1, dims=dims)
        self.pre_prev_prev = (
            ReLUConvBN(c_prev_prev, filters, 1, dims=dims) if c_prev_prev != filters else nn.Identity()
        )
        self.ops = nn.ModuleList()
        for block in cell:
            for op_name, source in block:
                stride = 2 if reduction and source < 2 else 1
                self.ops.append(build_op(op_name, filters, stride=stride, affine=True, dims=dims))
        self.out_channels = len(cell) * filters

    def forward(self, prev_prev: torch.Tensor, prev: torch.Tensor, keep_prob: float = 1.0) -> torch.Tensor:
        """``[N, c_prev_prev, *S']``, ``[N, c_prev, *S]`` → ``[N, B·filters, *S_out]``."""
        prev_prev = self.pre_prev_prev(resize(prev_prev, prev.shape[2:], align_corners=ALIGN_CORNERS))
        states = [prev_prev, self.pre_prev(prev)]
        ops = iter(self.ops)
        for block in self.cell:
            total: torch.Tensor | None = None
            for _, source in block:
                op = next(ops)
                out = op(states[source])
                if self.training and not isinstance(op, nn.Identity):
                    out = drop_path(out, keep_prob)
                total = out if total is None else total + out
            assert total is not None
            states.append(total)
        return torch.cat(states[2:], dim=1)


def conv_bn(c_in: int, c_out: int, kernel: int, stride: int = 1, dims: int = 2) -> list[nn.Module]:
    """Dense k×k conv (no bias: BN follows) → BN, as a list so the caller decides about the ReLU."""
    return [
        conv_nd(dims)(c_in, c_out, kernel, stride=stride, padding=kernel // 2, bias=False),
        batch_norm_nd(dims)(c_out),
    ]


class Stem(nn.Module):
    """``[N, C_in, *S]`` → (h^{-1} ``[N, c1, *ceil(S/2)]``, h^{0} ``[N, c2, *ceil(ceil(S/2)/2)]``)."""

    def __init__(self, in_channels: int, channels: tuple[int, int, int], dims: int = 2) -> None:
        super().__init__()
        c0, c1, c2 = channels
        self.conv0 = nn.Sequential(*conv_bn(in_channels, c0, 3, stride=2, dims=dims), nn.ReLU())
        self.conv1 = nn.Sequential(*conv_bn(c0, c1, 3, dims=dims))
        self.conv2 = nn.Sequential(nn.ReLU(), *conv_bn(c1, c2, 3, stride=2, dims=dims))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h_minus1 = self.conv1(self.conv0(x))
        return h_minus1, self.conv2(h_minus1)


__all__ = ["FixedCell", "Stem", "conv_bn", "drop_path", "scheduled_keep_prob"]
