"""One fused sep conv's first depthwise + pointwise conv, forward and backward, two ways (issue 16): a
depthwise conv with E filters per channel and a block-diagonal 1×1 (a, ``repeat_separable_input`` off),
against the input repeated once per edge, a plain depthwise conv and a grouped 1×1 (b, on; here the
repeat goes through autograd). Prints ms per call; records nothing.

    python benchmarks/bench_separable.py
"""

import time

import torch
from torch.nn import functional as F

from autodeeplab.fast.pointwise import pointwise_conv
from autodeeplab.ops.depthwise import depthwise_conv

torch.set_num_threads(1)
torch.manual_seed(0)
cl = torch.channels_last


def bench(G, N, C, S, E, k=3):
    x = torch.randn(G * N, C, S, S).contiguous(memory_format=cl).requires_grad_()
    dw = torch.randn(E * C, 1, k, k, requires_grad=True)  # edge-major (flat layout)
    pw = torch.randn(E * C, C, 1, 1, requires_grad=True)

    def a():
        d = dw.reshape(E, C, k, k).transpose(0, 1).reshape(C * E, 1, k, k)
        z = depthwise_conv(x, d, (k // 2,) * 2, (1, 1))
        p = (
            torch.block_diag(*pw.reshape(E, C, C).unbind(0))
            .reshape(E * C, E, C)
            .transpose(1, 2)
            .reshape(E * C, C * E, 1, 1)
        )
        return pointwise_conv(z, p)

    def b():
        xr = x.unsqueeze(1).expand(G * N, E, C, S, S).reshape(G * N, E * C, S, S).contiguous(memory_format=cl)
        z = F.conv2d(xr, dw, None, 1, k // 2, 1, E * C)
        return pointwise_conv(z, pw, groups=E)

    out = {}
    for name, f in (("a", a), ("b", b)):
        for _ in range(2):
            f().sum().backward()
        t = time.perf_counter()
        for _ in range(5):
            f().sum().backward()
        out[name] = (time.perf_counter() - t) / 5 * 1e3
    return out


for shape in [(3, 2, 40, 33, 5), (3, 2, 80, 17, 5), (3, 2, 160, 9, 5), (2, 2, 320, 5, 5), (3, 2, 40, 33, 2)]:
    print(shape, {k: f"{v:.2f} ms" for k, v in bench(*shape).items()}, flush=True)
