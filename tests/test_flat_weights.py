"""The edges' filters kept in one tensor (``execution.flat_edge_weights``, issue 16): the same values and
gradients as ``torch.cat`` of the parameters, ordinary parameters, and a search that ends bit-identical to
one without it (the fused SGD updates the slices in place)."""

from __future__ import annotations

import torch
from torch import nn

from autodeeplab.checkpoint_io import load_checkpoint, save_checkpoint
from autodeeplab.fast.execution import ExecutionConfig
from autodeeplab.fast.flat_weights import flat_weight
from autodeeplab.fast.supernet import build_supernet
from autodeeplab.ops.losses import make_loss
from autodeeplab.search.config import SearchConfig
from autodeeplab.search.steps import arch_step, make_optimizers, weight_step
from autodeeplab.space.autodeeplab.supernet import SearchSpaceConfig


def test_value_and_gradient_equal_the_concatenation_and_parameters_stay_leaves():
    torch.manual_seed(0)
    flat = [nn.Parameter(torch.randn(4, 3, 3, 3)) for _ in range(3)]
    plain = [nn.Parameter(p.detach().clone()) for p in flat]
    x = torch.randn(2, 3, 8, 8)
    for _ in range(2):  # the second call reuses the layout
        y = nn.functional.conv2d(x, flat_weight(flat))
        (y * y).sum().backward()
        z = nn.functional.conv2d(x, torch.cat(plain))
        (z * z).sum().backward()
        assert torch.equal(y, z)
        for p, q in zip(flat, plain, strict=True):
            assert p.is_leaf and p.is_contiguous() and p.grad.is_contiguous()
            assert torch.equal(p.grad, q.grad)
            p.grad = q.grad = None
    # the parameters are the consecutive slices of the one tensor returned
    fused = flat_weight(flat)
    assert fused.data_ptr() == flat[0].data_ptr()
    assert flat[1].data_ptr() == flat[0].data_ptr() + flat[0].numel() * flat[0].element_size()
    # new storage (here a dtype change) is noticed and laid out again
    holder = nn.ParameterList(flat).double()
    again = flat_weight(list(holder))
    assert again.dtype == torch.float64 and again.data_ptr() == holder[0].data_ptr()
    assert torch.equal(again, torch.cat([p.detach() for p in holder]))


def _search_pair(space: SearchSpaceConfig) -> tuple[nn.Module, nn.Module]:
    torch.manual_seed(0)
    on = build_supernet(space, 3, execution=ExecutionConfig(flat_edge_weights=True))
    off = build_supernet(space, 3, execution=ExecutionConfig(flat_edge_weights=False))
    assert all(p.is_contiguous() and p.storage_offset() == 0 for p in off.parameters())  # each its own
