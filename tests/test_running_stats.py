"""Running-statistics updates in closed form and batched (autodeeplab.fast.running_stats) equal sequential
ones."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from autodeeplab.fast.grouped_bn import multi_batch_norm, shared_batch_norm
from autodeeplab.fast.running_stats import batched_running_stats

TOL = {"atol": 1e-12, "rtol": 1e-10}


def modules(count: int, channels: int = 3, momentum: float = 0.1) -> list[nn.BatchNorm2d]:
    torch.manual_seed(0)
    bns = [nn.BatchNorm2d(channels, affine=False, momentum=momentum).double() for _ in range(count)]
    with torch.no_grad():  # start away from (0, 1) so that the decay of the old value shows
        for bn in bns:
            bn.running_mean.normal_()
            bn.running_var.uniform_(0.5, 2.0)
    return bns


def assert_same_buffers(got: list[nn.Module], expected: list[nn.Module]) -> None:
    for a, b in zip(got, expected, strict=True):
        assert torch.allclose(a.running_mean, b.running_mean, **TOL)
        assert torch.allclose(a.running_var, b.running_var, **TOL)
        assert int(a.num_batches_tracked) == int(b.num_batches_tracked)


@pytest.mark.parametrize(("groups", "repeats"), [(3, 1), (2, 1), (1, 3), (1, 2)])
@pytest.mark.parametrize("batched", [False, True])
def test_closed_form_equals_sequential_calls(groups, repeats, batched):
    bns = modules(2)
    ref = copy.deepcopy(bns)
    x = torch.randn(2 * groups, 6, 5, 4, dtype=torch.float64) * 2 + 1
    with batched_running_stats() if batched else torch.no_grad():
        multi_batch_norm(x, bns, groups, repeats)
    for chunk in x.chunk(groups):  # the reference: one module call per group, `repeats` times
        for _ in range(repeats):
            for i, bn in enumerate(ref):
                bn(chunk[:, 3 * i : 3 * i + 3])
    assert_same_buffers(bns, ref)


def test_deferred_updates_wait_for_the_end_and_cover_several_calls():
    bns, shared = modules(2), modules(3, momentum=0.3)
    ref, ref_shared = copy.deepcopy(bns), copy.deepcopy(shared)
    x, p = torch.randn(6, 6, 4, 4, dtype=torch.float64), torch.randn(2, 3, 4, 4, dtype=torch.float64)
    before = bns[0].running_mean.clone()
    with batched_running_stats():
        multi_batch_norm(x, bns, groups=3)
        shared_batch_norm(p, shared, repeats=2)
        assert torch.equal(bns[0].running_mean, before)  # nothing moved yet
    for chunk in x.chunk(3):
        for i, bn in enumerate(ref):
            bn(chunk[:, 3 * i : 3 * i + 3])
    for _ in range(2):
        for bn in ref_shared:
            bn(p)
    assert_same_buffers(bns + shared, ref + ref_shared)


def test_a_failed_forward_moves_no_statistic():
    bns = modules(1)
    before = bns[0].running_mean.clone()
    with pytest.raises(RuntimeError, match="boom"), batched_running_stats():
        multi_batch_norm(torch.randn(4, 3, 3, 3, dtype=torch.float64), bns, groups=2)
        raise RuntimeError("boom")
    assert torch.equal(bns[0].running_mean, before)
    assert int(bns[0].num_batches_tracked) == 0


def test_a_module_recorded_again_is_updated_in_order():
    """One forward may record a module twice (a cell run once per incoming resolution): the second record
    must decay the first, d²r + d(1-d)s₁ + (1-d)s₂, as two module calls do; so must a module updating its
    own buffers (one module, one group) while an update of it waits."""
    bns = modules(2)
    ref = copy.deepcopy(bns)
    g = torch.Generator().manual_seed(1)
    x1, x2, x3 = (torch.randn(2, 6, 4, 4, generator=g, dtype=torch.float64) * k + k for k in (1, 2, 3))
    with batched_running_stats():
        multi_batch_norm(x1, bns)  # two modules: deferred
        multi_batch_norm(x2, bns)  # both again
        multi_batch_norm(x3[:, :3], bns[:1])  # the first alone, which would update at once
    for x in (x1, x2):
        for i, bn in enumerate(ref):
            bn(x[:, 3 * i : 3 * i + 3])
    ref[0](x3[:, :3])
    assert_same_buffers(bns, ref)
