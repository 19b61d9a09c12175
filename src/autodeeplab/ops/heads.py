"""Segmentation heads of the found network: ASPP (DeepLabv3) and the DeepLabv3+ decoder.

Settings follow DeepLab's ``model.py`` as used for Auto-DeepLab (paper §5.2): every convolution is
dense (not separable) and has no bias when BN follows it. Both heads take ``dims`` (2 for images
``[N, C, H, W]``, 3 for volumes ``[N, C, D, H, W]``), like the primitives.

- :class:`ASPP`: five branches of ``channels`` each — 1×1 conv, three 3×3 atrous convs, image
  pooling — concatenated and projected by a 1×1 conv, then dropout.
- :class:`DeepLabV3PlusDecoder`: low-level features → 1×1 conv to 48 channels, concatenated with the
  ASPP output upsampled to their size (bilinear, corners aligned: DeepLab's ``resize_bilinear``), two
  3×3 convs, a 1×1 classifier with bias.

The image-pooling branch is a 1×1 conv *with bias* followed by ReLU, without BN: DeepLab puts a BN
there, but BN over a 1×1 pooled map has a single value per channel when the batch holds one image,
which PyTorch rejects in training mode (and whose statistics would be meaningless anyway). The bias
takes the place of BN's shift; this changes the parameter count by ``channels`` (256), far below the
precision of the paper's Table 2.
"""

from __future__ import annotations

import torch
from torch import nn

from autodeeplab.ops.primitives import ALIGN_CORNERS, batch_norm_nd, conv_nd, resize

DEEPLAB_RATE_STRIDE = 16
"""DeepLab's atrous rates are given at output stride 16 and scale inversely with it."""


def aspp_rates_for_stride(rates_os16: tuple[int, ...], output_stride: int) -> tuple[int, ...]:
    """Scale atrous ``rates_os16`` to ``output_stride``: (6, 12, 18) → (12, 24, 36) at 8, (3, 6, 9) at 32."""
    return tuple(max(1, round(r * DEEPLAB_RATE_STRIDE / output_stride)) for r in rates_os16)


def conv_bn_relu(c_in: int, c_out: int, kernel: int, dilation: int = 1, dims: int = 2) -> nn.Sequential:
    """Dense k×k conv (no bias) → BN → ReLU: ``[N, c_in, *S]`` → ``[N, c_out, *S]`` (same size)."""
    padding = dilation * (kernel - 1) // 2
    return nn.Sequential(
        conv_nd(dims)(c_in, c_out, kernel, padding=padding, dilation=dilation, bias=False),
        batch_norm_nd(dims)(c_out),
        nn.ReLU(),
    )


class ImagePooling(nn.Module):
    """Global average → 1×1 conv (bias) → ReLU → broadcast: ``[N, C, *S]`` → ``[N, channels, *S]``."""

    def __init__(self, in_channels: int, channels: int, dims: int = 2) -> None:
        super().__init__()
        self.conv = conv_nd(dims)(in_channels, channels, 1, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        spatial = tuple(range(2, x.dim()))
        pooled = torch.relu(self.conv(x.mean(dim=spatial, keepdim=True)))
        # A resize of a 1×1 map is a broadcast (aligned corners or not); expand says so without an
        # interpolation op.
        return pooled.expand(-1, -1, *x.shape[2:])


class ASPP(nn.Module):
    """Atrous spatial pyramid pooling: ``[N, in_channels, *S]`` → ``[N, channels, *S]``."""

    def __init__(
        self,
        in_channels: int,
        channels: int,
        rates: tuple[int, ...],
        dropout: float = 0.1,
        dims: int = 2,
    ) -> None:
        super().__init__()
        self.rates = tuple(rates)
        branches: list[nn.Module] = [conv_bn_relu(in_channels, channels, 1, dims=dims)]
        branches += [conv_bn_relu(in_channels, channels, 3, dilation=r, dims=dims) for r in self.rates]
        branches.append(ImagePooling(in_channels, channels, dims=dims))
        self.branches = nn.ModuleList(branches)
        self.project = conv_bn_relu(len(branches) * channels, channels, 1, dims=dims)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.project(torch.cat([branch(x) for branch in self.branches], dim=1)))


class DeepLabV3PlusDecoder(nn.Module):
    """(ASPP ``[N, aspp_channels, *s]``, low-level ``[N, low_in, *S4]``) → logits ``[N, K, *S4]``
    (``num_classes`` None: the fused features ``[N, channels, *S4]``, for a further decoder stage)."""

    def __init__(
        self,
        low_level_in: int,
        aspp_channels: int,
        low_level_channels: int,
        channels: int,
        num_classes: int | None,
        dims: int = 2,
    ) -> None:
        super().__init__()
        self.reduce = conv_bn_relu(low_level_in, low_level_channels, 1, dims=dims)
        self.fuse = nn.Sequential(
            conv_bn_relu(aspp_channels + low_level_channels, channels, 3, dims=dims),
            conv_bn_relu(channels, channels, 3, dims=dims),
        )
        self.classifier = (
            conv_nd(dims)(channels, num_classes, 1, bias=True) if num_classes is not None else nn.Identity()
        )

    def forward(self, aspp_out: torch.Tensor, low_level: torch.Tensor) -> torch.Tensor:
        low = self.reduce(low_level)
        # DeepLab's refine_by_decoder resizes with its resize_bilinear, which aligns corners.
        fused = torch.cat([resize(aspp_out, low.shape[2:], align_corners=ALIGN_CORNERS), low], dim=1)
        return self.classifier(self.fuse(fused))


class FineDecoderStage(nn.Module):
    """A second decoder stage at output stride 2 (not in the paper; for small volumes, see
    ``NetworkConfig.fine_skip_channels``): (decoder features ``[N, c, *S4]``, stem features
    ``[N, skip_in, *S2]``) → logits ``[N, K, *S2]``, built like the DeepLabv3+ stage above but narrow
    (``skip_channels`` wide throughout: a 3×3(×3) convolution at stride 2 is 8× the voxels of stride 4)."""

    def __init__(
        self, channels: int, skip_in: int, skip_channels: int, num_classes: int | None, dims: int = 2
    ) -> None:
        super().__init__()
        self.reduce = conv_bn_relu(skip_in, skip_channels, 1, dims=dims)
        self.fuse = conv_bn_relu(channels + skip_channels, skip_channels, 3, dims=dims)
        self.classifier = (  # None: the features go on to a FullResolutionStage
            conv_nd(dims)(skip_channels, num_classes, 1, bias=True)
            if num_classes is not None
            else nn.Identity()
        )

    def forward(self, features: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        fine = self.reduce(skip)
        coarse = resize(features, fine.shape[2:], align_corners=ALIGN_CORNERS)
        return self.classifier(self.fuse(torch.cat([coarse, fine], dim=1)))


class FullResolutionStage(nn.Module):
    """A last decoder stage at the input's resolution (not in the paper; ``full_skip_channels``):
    (stride-2 features ``[N, c, *S2]``, the input ``[N, C_in, *S]``) → logits ``[N, K, *S]``. The input
    passes one 3×3(×3) conv, is fused with the upsampled features by another, then classified: boundaries
    are placed on the voxel grid itself instead of interpolated from stride-2 logits."""

    def __init__(self, channels: int, in_channels: int, width: int, num_classes: int, dims: int = 2) -> None:
        super().__init__()
        self.reduce = conv_bn_relu(in_channels, width, 3, dims=dims)
        self.fuse = conv_bn_relu(channels + width, width, 3, dims=dims)
        self.classifier = conv_nd(dims)(width, num_classes, 1, bias=True)

    def forward(self, features: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        fine = self.reduce(image)
        coarse = resize(features, fine.shape[2:], align_corners=ALIGN_CORNERS)
        return self.classifier(self.fuse(torch.cat([coarse, fine], dim=1)))
