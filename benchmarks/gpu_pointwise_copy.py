"""Does the pointwise backward launch a copy? One grouped 1×1 conv as matmuls, profiled.

``fast/pointwise._PointwiseConv`` computes the input gradient as its transpose, written into the transposed
view of a channels-last tensor (dL/dxᵀ = Wᵀ·gᵀ). BLAS on the CPU takes such a result directly; cuBLAS should
too (torch swaps the operands of a transposed result), but that was read, not run. This script runs one
forward + backward of a 5-group channels-last pointwise conv and lists every kernel (CUDA) or aten op (CPU)
the backward ran, flagging copies::

    python benchmarks/gpu_pointwise_copy.py --device cuda   # on a lent GPU (gpu_check.sh runs it)
    python benchmarks/gpu_pointwise_copy.py --device cpu

Prints one line per dtype and shape: the kernels/ops and how many look like copies. On CUDA, under autocast
two copy kernels are expected: the casts of the float32 leaves' gradients back to float32. On the CPU the
list holds aten ops, nested ones too (a cast counts as ``to``, ``_to_copy`` and ``copy_``; oneDNN's bf16
``bmm`` copies gᵀ), so its counts are larger. The matmul path runs only on channels-last activations: on a
GPU that is the bf16/fp16 search (fp32 runs contiguous, through the library's convolution) or
``execution.memory_format=channels_last``. Nothing is recorded: the answer is a yes/no for the issue note.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools

import torch
from torch.profiler import ProfilerActivity, profile

from autodeeplab.fast.pointwise import pointwise_conv

COPY_WORDS = ("copy", "contiguous", "clone", "transpose_kernel", "elementwise_kernel")


def profile_backward(device: str, dtype: torch.dtype | None, grouped: bool) -> list[str]:
    """Names of the kernels (CUDA) or aten ops (CPU) run by one backward of a pointwise conv of 5 inputs
    side by side: 5 channel groups sharing filters (``mm``) or a 5-group conv (``bmm``, ``grouped``)."""
    torch.manual_seed(0)
    k, c, o = 5, 16, 16
    x = torch.randn(2, k * c, 33, 33, device=device).to(memory_format=torch.channels_last)
    x.requires_grad_(True)
    w = torch.randn(k * o if grouped else o, c, 1, 1, device=device, requires_grad=True)
    cast = torch.autocast(device, dtype=dtype) if dtype is not None else contextlib.nullcontext()
    with cast:
        y = pointwise_conv(x, w, groups=k) if grouped else pointwise_conv(x, w, channel_groups=k)
    g = torch.randn_like(y)
    for _ in range(2):  # warm-up: cuBLAS handles, workspace
        torch.autograd.grad(y, (x, w), g, retain_graph=True)
    if device == "cuda":
        torch.cuda.synchronize()
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device == "cuda" else [])
    with profile(activities=activities) as prof:
        torch.autograd.grad(y, (x, w), g, retain_graph=True)
        if device == "cuda":
            torch.cuda.synchronize()
    names = []
    for e in prof.events():
        on_gpu = str(getattr(e, "device_type", "")).endswith("CUDA")
        if (device == "cuda" and on_gpu) or (device == "cpu" and e.name.startswith("aten::")):
            names.append(e.name)
    return names


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    args = parser.parse_args()
    dtypes = {"fp32": None, "bf16 autocast": torch.bfloat16}
    if args.device == "cuda":
        dtypes["fp16 autocast"] = torch.float16
    for (label, dtype), grouped in itertools.product(dtypes.items(), (False, True)):
        names = profile_backward(args.device, dtype, grouped)
        copies = [n for n in names if any(w in n.lower() for w in COPY_WORDS)]
        what = "kernels" if args.device == "cuda" else "aten ops"
        kind = "5-group conv (bmm)" if grouped else "5 channel groups (mm)"
        print(f"pointwise backward, {kind}, {label}: {len(names)} {what}, {len(copies)} copy-like")
        for n in names:
            print(f"    {'COPY? ' if n in copies else '      '}{n[:140]}")


if __name__ == "__main__":
    main()
