"""Mixed precision of the search steps: autocast contexts and the fp16 gradient scaler's step."""

from __future__ import annotations

import copy

import torch
from torch import nn

from autodeeplab.precision import autocast, backward_and_step, grad_scaler


def test_autocast_contexts():
    conv = nn.Conv2d(2, 2, 1)
    x = torch.randn(1, 2, 4, 4)
    with autocast("fp32", "cpu"):
        assert conv(x).dtype == torch.float32
    with autocast("bf16", "cpu"):
        assert conv(x).dtype == torch.bfloat16


def make_step(precision: str, grad: float, clip: float = 0.0):
    torch.manual_seed(0)
    model = nn.Linear(3, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x = torch.randn(4, 3)
    loss = grad * model(x).sum()
    backward_and_step(loss, opt, precision, "cpu", model.parameters(), clip)
    return model, opt


def test_scaled_step_equals_plain_step_and_clips_unscaled_gradients():
    plain, _ = make_step("fp32", 1.0, clip=0.5)
    scaled, opt = make_step("fp16", 1.0, clip=0.5)
    for p, q in zip(plain.parameters(), scaled.parameters(), strict=True):
        assert torch.allclose(p, q, atol=1e-6)  # the scale is a power of two: unscaling is exact
    assert grad_scaler(opt, "cpu").get_scale() == 65536.0  # no overflow: the scale stays


def test_scaled_step_skips_overflow_and_lowers_the_scale():
    torch.manual_seed(0)
    model = nn.Linear(3, 1)
    before = copy.deepcopy(model.state_dict())
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    loss = model(torch.randn(4, 3)).sum() * float("inf")
    backward_and_step(loss, opt, "fp16", "cpu")
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())  # step skipped
    assert grad_scaler(opt, "cpu").get_scale() < 65536.0
