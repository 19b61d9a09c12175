"""Candidate operations of the Auto-DeepLab cell (paper §3.1) as a name → factory table.

Every factory has the signature ``factory(channels, stride, affine, dims) -> nn.Module`` and maps
``[N, C, *S]`` to ``[N, C, *ceil(S / stride)]`` where ``S`` has ``dims`` spatial axes (2 for images,
3 for volumes). The search cell and the found network build their ops from this one table.

Definitions follow Google's released model (``deeplab/core/nas_cell.py``):
- ``sep_conv_k``: [ReLU → depthwise k×k → pointwise 1×1 → BN] twice, the stride on the first depthwise.
- ``atr_conv_k``: ReLU → dense k×k convolution with dilation 2 → BN (dense, not separable). With
  stride 2 (the found network's downward cells) the released model does not stride the dilated conv:
  it resizes the ReLU output bilinearly to ``ceil(S/2)`` (``scale_dimension(n, 0.5)``, corners
  aligned like its ``resize_bilinear``), then applies the k×k conv *without* dilation
  (:class:`AtrousConv`). Same parameters, same output size as the other stride-2 ops.
- pools: 3×3, padding excluded from averages (TensorFlow ``SAME`` semantics). During search the
  mixed op adds a BN without affine parameters after them (see :mod:`autodeeplab.space.autodeeplab.cell`).
- ``skip_connect``: identity; with stride 2, ReLU → 1×1 conv stride 2 → BN (as NASNet does), which
  also works for odd sizes and volumes.
- ``none``: zeros; the search cell never evaluates it since its contribution is exactly zero.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn
from torch.nn import functional as F

PRIMITIVES: tuple[str, ...] = (
    "none",
    "max_pool_3x3",
    "avg_pool_3x3",
    "skip_connect",
    "sep_conv_3x3",
    "sep_conv_5x5",
    "atr_conv_3x3",
    "atr_conv_5x5",
)
"""The 8 primitive names in the order used by α's second axis and by ``arch_params.json``."""

POOL_PRIMITIVES: frozenset[str] = frozenset({"max_pool_3x3", "avg_pool_3x3"})


def useful_half_widths(
    size: tuple[int, ...] | torch.Size, kernel: tuple[int, ...], dilation: tuple[int, ...]
) -> tuple[int, ...]:
    """Per axis, how many taps either side of a centred odd kernel can touch an input of ``size``.

    With "same" zero padding (``dilation * (kernel - 1) / 2``) the tap at offset ``t * dilation`` from the
    output position reads only padding when ``|t| * dilation >= size``, whatever the position and stride: it
    multiplies zeros forward and gets a zero gradient backward. On small maps (the OS16/OS32 levels of a
    volume, ASPP's rates 6-18 on a 3x4x3 map) most taps are such: a 5x5x5 kernel on 2x2x2 maps uses 27 of its
    125, a rate-12 3x3x3 only its centre.
    """
    return tuple(min((k - 1) // 2, (s - 1) // d) for s, k, d in zip(size, kernel, dilation, strict=True))


class _CroppedKernelConv:
    """A convolution that skips the kernel taps that would read only zero padding (see
    :func:`useful_half_widths`): the same function, the same parameters and state-dict keys, less work.

    Applies to "same"-padded odd kernels with zero padding, any stride and groups; any other convolution
    runs unchanged. The result equals the full kernel's up to float summation order (tested).
    """

    def _conv_forward(self, input: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None):
        input = depthwise_input(input, self.groups)
        cropped = self._cropped(input, weight)
        if cropped is not None:
            weight, padding = cropped
            conv = conv_function(len(self.kernel_size))
            return conv(input, weight, bias, self.stride, padding, self.dilation, self.groups)
        return super()._conv_forward(input, weight, bias)  # type: ignore[misc]

    def _cropped(
        self, input: torch.Tensor, weight: torch.Tensor
    ) -> tuple[torch.Tensor, tuple[int, ...]] | None:
        """The filters ``weight`` ``[O, C/G, *k]`` without the taps that only read padding of ``input`` and
        the padding that goes with them (the full filters and padding when every tap is useful), or None
        when this convolution is not a zero-padded "same" one or is being exported."""
        kernel, dilation, padding = self.kernel_size, self.dilation, self.padding
        centres = [(k - 1) // 2 for k in kernel]
        same = not isinstance(padding, str) and all(  # not padding="same"/"valid" given as a string
            k % 2 == 1 and p == d * c for k, d, p, c in zip(kernel, dilation, padding, centres, strict=True)
        )
        # The TorchScript ONNX exporter cannot give a sliced weight a kernel shape: exports keep every tap.
        exporting = torch.jit.is_tracing() or torch.onnx.is_in_onnx_export()
        if self.padding_mode != "zeros" or not same or exporting:
            return None
        halves = useful_half_widths(input.shape[2:], kernel, dilation)
        if halves == tuple(centres):
            return weight, tuple(padding)
        taps = [slice(c - h, c + h + 1) for c, h in zip(centres, halves, strict=True)]
        return weight[(..., *taps)], tuple(h * d for h, d in zip(halves, dilation, strict=True))


class CroppedConv1d(_CroppedKernelConv, nn.Conv1d):
    """:class:`nn.Conv1d` without the taps that read only padding."""


class CroppedConv2d(_CroppedKernelConv, nn.Conv2d):
    """:class:`nn.Conv2d` without the taps that read only padding."""


class CroppedConv3d(_CroppedKernelConv, nn.Conv3d):
    """:class:`nn.Conv3d` without the taps that read only padding."""


def conv_nd(dims: int) -> type[nn.Module]:
    """The convolution class for ``dims`` spatial dimensions (a subclass of ``nn.Conv{dims}d`` that skips the
    kernel taps reading only padding: :class:`CroppedConv3d`)."""
    return _by_dims(dims, CroppedConv1d, CroppedConv2d, CroppedConv3d)


def depthwise_input(x: torch.Tensor, groups: int) -> torch.Tensor:
    """``x`` as a convolution with ``groups`` groups should get it: a depthwise conv (``groups`` = the
    channels) of a CPU volume ``[N, C, D, H, W]`` gets it contiguous. torch 2.13's CPU depthwise conv3d
    returns a wrong bf16 weight gradient, now and then, for a channels-last-3d input, whatever the output
    gradient's layout (relative errors up to 1e15 seen in a search step; none with a contiguous input;
    ``tests/test_perf_precision.py``). Anything else is returned as it is."""
    if x.dim() == 5 and x.device.type == "cpu" and groups == x.shape[1] > 1 and not x.is_contiguous():
        return x.contiguous()
    return x


def _conv3d(x: torch.Tensor, weight: torch.Tensor, bias=None, stride=1, padding=0, dilation=1, groups=1):
    """``F.conv3d`` with :func:`depthwise_input`."""
    return F.conv3d(depthwise_input(x, groups), weight, bias, stride, padding, dilation, groups)


def conv_function(dims: int) -> Callable[..., torch.Tensor]:
    """The functional convolution (``F.conv1d/2d``, ``F.conv3d`` through :func:`depthwise_input`) for
    ``dims`` spatial dimensions."""
    return _by_dims(dims, F.conv1d, F.conv2d, _conv3d)


def batch_norm_nd(dims: int) -> type[nn.Module]:
    """The batch-norm class for ``dims`` spatial dimensions."""
    return _by_dims(dims, nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


def _by_dims(dims: int, one: type, two: type, three: type) -> type:
    if dims not in (1, 2, 3):
        raise ValueError(f"spatial dims must be 1, 2 or 3, got {dims}")
    return {1: one, 2: two, 3: three}[dims]


ALIGN_CORNERS = True
"""How the released model resizes: corner pixels onto corner pixels. Its ``resize_bilinear``
(``deeplab/core/utils.py``) calls ``tf.image.resize_bilinear(align_corners=True)`` for the found network's
h^{l-2} resize, upward cell input, decoder and logits, and for its strided atrous op (:class:`AtrousConv`);
those pass ``align_corners=ALIGN_CORNERS`` to :func:`resize`."""


def resize(x: torch.Tensor, size: tuple[int, ...] | torch.Size, align_corners: bool = False) -> torch.Tensor:
    """Resample ``[N, C, *S]`` to ``[N, C, *size]`` with (bi/tri)linear interpolation.

    The single resampling function of the package. ``align_corners=True`` maps corner pixels onto
    corner pixels (TensorFlow's ``resize_bilinear(align_corners=True)``): the released model resizes
    that way everywhere, so the found network (:mod:`autodeeplab.nets`, :mod:`autodeeplab.ops.heads`)
    and its strided atrous op pass :data:`ALIGN_CORNERS`. The search supernet keeps the default
    ``False``, as it always has (changing it would change every seeded search).
    """
    if tuple(x.shape[2:]) == tuple(size):
        return x
    mode = {1: "linear", 2: "bilinear", 3: "trilinear"}[x.dim() - 2]
    y = nn.functional.interpolate(x, size=tuple(size), mode=mode, align_corners=align_corners)
    if y.requires_grad and y.device.type == "cpu":
        y.register_hook(_dense_gradient(memory_format_of(y)))
    return y


CHANNELS_LAST: dict[int, torch.memory_format] = {4: torch.channels_last, 5: torch.channels_last_3d}
"""The channels-last memory format of an ``[N, C, *S]`` tensor by its number of dimensions."""


def memory_format_of(t: torch.Tensor) -> torch.memory_format:
    """``channels_last(_3d)`` when ``t`` ``[N, C, *S]`` is laid out so, else ``contiguous_format``."""
    layout = CHANNELS_LAST.get(t.dim())
    return layout if layout is not None and t.is_contiguous(memory_format=layout) else torch.contiguous_format


def _dense_gradient(memory_format: torch.memory_format):
    """A gradient hook that hands the interpolation's backward a dense gradient in its output's layout.
    A resized map that is concatenated (the decoders) gets a slice of the concatenation's gradient, and the
    CPU's interpolation backward is slow on such strided gradients: 101 ms for ``[2, 16, 64³]`` from
    ``[2, 16, 32³]`` channels-last-3d against 16 ms, plus 15 ms for the copy (one core, torch 2.13). Equal
    bit for bit. No gradient (a function that gives none) stays none; a dense one is returned as it is
    (``contiguous`` returns its tensor itself then, and branches on strides would break ``torch.compile``
    graphs)."""

    def dense(grad: torch.Tensor | None) -> torch.Tensor | None:
        return None if grad is None else grad.contiguous(memory_format=memory_format)

    return dense


def strided_size(size: tuple[int, ...] | torch.Size, stride: int) -> tuple[int, ...]:
    """Spatial size after a stride-``stride`` op: ``ceil(n / stride)`` per axis.

    What a padded strided conv or pool of the package produces, and what TensorFlow's
    ``scale_dimension(n, 1/stride) = int((n - 1) / stride + 1)`` gives for the released model's resize.
    """
    return tuple((n - 1) // stride + 1 for n in size)


class ReLUConvBN(nn.Sequential):
    """ReLU → k×k conv (optionally dilated) → BN: ``[N, C_in, *S]`` → ``[N, C_out, *S/stride]``."""

    def __init__(
        self,
        c_in: int,
        c_out: int,
        kernel: int,
        stride: int = 1,
        dilation: int = 1,
        affine: bool = True,
        dims: int = 2,
    ) -> None:
        padding = dilation * (kernel - 1) // 2
        super().__init__(
            nn.ReLU(inplace=False),
            conv_nd(dims)(c_in, c_out, kernel, stride=stride, padding=padding, dilation=dilation, bias=False),
            batch_norm_nd(dims)(c_out, affine=affine),
        )


class SepConv(nn.Sequential):
    """Two stacked [ReLU → depthwise k×k → pointwise 1×1 → BN]; stride on the first depthwise."""

    def __init__(self, c: int, kernel: int, stride: int = 1, affine: bool = True, dims: int = 2) -> None:
        conv, bn, pad = conv_nd(dims), batch_norm_nd(dims), kernel // 2
        layers: list[nn.Module] = []
        for s in (stride, 1):
            layers += [
                nn.ReLU(inplace=False),
                conv(c, c, kernel, stride=s, padding=pad, groups=c, bias=False),
                conv(c, c, 1, bias=False),
                bn(c, affine=affine),
            ]
        super().__init__(*layers)


class AtrousConv(nn.Sequential):
    """The ``atr_conv_k`` op: ``[N, C, *S]`` → ``[N, C, *ceil(S / stride)]`` (released ``nas_cell.py``).

    Stride 1: ReLU → k×k conv, dilation 2 → BN. Stride > 1: ReLU → (bi/tri)linear resize to
    ``ceil(S / stride)`` with aligned corners → k×k conv, dilation 1 → BN. The modules are
    ``[ReLU, conv, BN]`` either way, so parameters and state-dict keys match :class:`ReLUConvBN`'s.
    """

    def __init__(self, c: int, kernel: int, stride: int = 1, affine: bool = True, dims: int = 2) -> None:
        dilation = 2 if stride == 1 else 1  # the released op never combines a stride with a dilation
        super().__init__(
            nn.ReLU(inplace=False),
            conv_nd(dims)(c, c, kernel, padding=dilation * (kernel - 1) // 2, dilation=dilation, bias=False),
            batch_norm_nd(dims)(c, affine=affine),
        )
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        relu, conv, bn = self[0], self[1], self[2]
        x = relu(x)
        if self.stride > 1:
            x = resize(x, strided_size(x.shape[2:], self.stride), align_corners=ALIGN_CORNERS)
        return bn(conv(x))

    def extra_repr(self) -> str:
        return f"stride={self.stride} (resize, then undilated conv)" if self.stride > 1 else ""


class Zero(nn.Module):
    """The ``none`` op: zeros of the output shape (``[N, C, *ceil(S / stride)]``)."""

    def __init__(self, stride: int) -> None:
        super().__init__()
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride == 1:
            return x.mul(0.0)
        index = (slice(None), slice(None)) + (slice(None, None, self.stride),) * (x.dim() - 2)
        return x[index].mul(0.0)


class AvgPool3dExcludePad(nn.Module):
    """3×3×3 average pool that excludes padding, for volumes of any size.

    ``nn.AvgPool3d`` refuses inputs smaller than the kernel even when padded (small MRI volumes at
    output stride 32 are 1–2 voxels wide), so pad explicitly, sum-pool, and divide by the count of
    real voxels in each window. Equal to ``nn.AvgPool3d(3, stride, 1, count_include_pad=False)``
    wherever that one works.
    """

    def __init__(self, stride: int) -> None:
        super().__init__()
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = nn.functional
        padded = f.pad(x, (1, 1) * 3)
        ones = f.pad(torch.ones_like(x[:1, :1]), (1, 1) * 3)
        total = f.avg_pool3d(padded, 3, self.stride)
        count = f.avg_pool3d(ones, 3, self.stride)
        return total / count


def _pool(kind: str, c: int, stride: int, dims: int) -> nn.Module:
    if kind == "max":
        return _by_dims(dims, nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d)(3, stride=stride, padding=1)
    if dims == 3:
        return AvgPool3dExcludePad(stride)
    avg = _by_dims(dims, nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d)
    return avg(3, stride=stride, padding=1, count_include_pad=False)


def _skip(c: int, stride: int, affine: bool, dims: int) -> nn.Module:
    if stride == 1:
        return nn.Identity()
    return ReLUConvBN(c, c, 1, stride=stride, affine=affine, dims=dims)


OpFactory = Callable[[int, int, bool, int], nn.Module]

OPS: dict[str, OpFactory] = {
    "none": lambda c, stride, affine, dims: Zero(stride),
    "max_pool_3x3": lambda c, stride, affine, dims: _pool("max", c, stride, dims),
    "avg_pool_3x3": lambda c, stride, affine, dims: _pool("avg", c, stride, dims),
    "skip_connect": _skip,
    "sep_conv_3x3": lambda c, stride, affine, dims: SepConv(c, 3, stride, affine, dims),
    "sep_conv_5x5": lambda c, stride, affine, dims: SepConv(c, 5, stride, affine, dims),
    "atr_conv_3x3": lambda c, stride, affine, dims: AtrousConv(c, 3, stride, affine, dims),
    "atr_conv_5x5": lambda c, stride, affine, dims: AtrousConv(c, 5, stride, affine, dims),
}
assert tuple(OPS) == PRIMITIVES


def build_op(name: str, channels: int, stride: int = 1, affine: bool = True, dims: int = 2) -> nn.Module:
    """Build primitive ``name`` mapping ``[N, channels, *S]`` to ``[N, channels, *ceil(S/stride)]``."""
    if name not in OPS:
        raise KeyError(f"unknown primitive {name!r}; known: {', '.join(PRIMITIVES)}")
    return OPS[name](channels, stride, affine, dims)
