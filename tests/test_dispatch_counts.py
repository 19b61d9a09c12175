"""The operator counter of issue 16: exact counts on hand-checked pieces of work, classes, FLOPs, and counts
of the supernet's steps that do not depend on the crop."""

from __future__ import annotations

import pytest
import torch
from torch.nn import functional as F

from autodeeplab.fast.dispatch import count_dispatches, gpu_seconds
from autodeeplab.search.config import SearchConfig
from autodeeplab.search.dispatch_probe import count_search_steps, format_dispatches
from autodeeplab.space.autodeeplab.supernet import SearchSpaceConfig


def test_a_conv_relu_sum_forward_and_backward_by_hand():
    x = torch.randn(2, 3, 8, 8, requires_grad=True)
    w = torch.randn(4, 3, 3, 3, requires_grad=True)
    counts = count_dispatches(lambda: F.conv2d(x, w).relu().sum().backward())
    ops = counts.by_op
    # one kernel of each forward op and of each backward formula; the seed gradient is a ones_like
    for op in ("convolution", "relu", "sum", "ones_like", "threshold_backward", "convolution_backward"):
        assert ops[op] == 1, op
    assert counts.by_class["view"] == ops["expand"] + ops["detach"] > 0  # views launch nothing
    # FLOPs: 2 per multiply-add; the forward conv, then its input and weight gradients (each as large)
    forward = 2 * 2 * 4 * 3 * 9 * 6 * 6
    assert counts.flops == 3 * forward


def test_syncs_views_and_allocations_are_told_apart():
    x = torch.randn(6)
    index = torch.tensor([0, 2])
    counts = count_dispatches(lambda: (x[index], x[x > 0], x.sum().item(), x.view(2, 3).t(), torch.empty(3)))
    assert counts.syncs == 2  # the boolean mask and .item(); an integer index is an ordinary kernel
    assert counts.by_op["index"] == 2 and counts.by_class["view"] == 2 and counts.by_class["alloc"] == 1
    assert counts.kernels == 5  # index, gt, index (mask), sum, _local_scalar_dense
    assert gpu_seconds(counts, launch_seconds=1e-5, flop_rate=1e12) == pytest.approx(5e-5)


@pytest.mark.parametrize("reference", [False, True])
def test_search_step_kernel_counts_do_not_depend_on_the_crop(reference):
    from autodeeplab.fast.execution import ExecutionConfig, reference_switches
    from autodeeplab.fast.supernet import build_supernet

    execution = ExecutionConfig(**(reference_switches() if reference else {}))
    config = SearchConfig(
        space=SearchSpaceConfig(filter_multiplier=2, num_layers=3, num_blocks=2), execution=execution
    )
    config.batch_size = 2
    counts = []
    for crop in (33, 49, 65):
        torch.manual_seed(0)
        model = build_supernet(config.space, 3, execution=config.execution)
        counts.append(count_search_steps(model, config, torch.device("cpu"), (3, crop, crop), 3))
    for step in ("weight", "arch"):
        # Only the slices that trim upsampled maps to odd sizes (and their backward) depend on the crop.
        trims = ("slice", "slice_backward")
        first = counts[0][step]
        for other in counts[1:]:
            c = other[step]
            assert {k: v for k, v in c["ops"].items() if k not in trims} == {
                k: v for k, v in first["ops"].items() if k not in trims
            }
            assert abs(c["kernels"] - first["kernels"]) <= 0.02 * first["kernels"]
        assert counts[0][step]["gflop"] < counts[2][step]["gflop"]  # the arithmetic does grow
    # No host sync in a weight step; an architecture step reads only Adam's step counters (CPU tensors on
    # any device unless the optimizer is capturable): one per architecture parameter.
    assert counts[0]["weight"]["syncs"] == 0
    assert counts[0]["arch"]["syncs"] == 2 and counts[0]["arch"]["ops"]["_local_scalar_dense"] == 2
    lines = format_dispatches(counts[0])
    assert "weight step" in lines[0] and "GPU floor" in lines[-2] and "capture_steps" in lines[-1]


def test_a_grouped_convs_backward_flops_are_its_forwards_per_gradient():
    """torch's formula counts a grouped conv's weight gradient as if ungrouped; ours counts each gradient
    asked for at the forward's cost (dense and depthwise alike)."""
    x = torch.randn(2, 12, 9, 9)
    for weight, groups in ((torch.randn(12, 1, 3, 3), 12), (torch.randn(6, 12, 3, 3), 1)):
        forward = count_dispatches(lambda w=weight, g=groups: F.conv2d(x, w, None, 1, 1, 1, g)).flops
        grad = torch.randn(2, weight.shape[0], 9, 9)
        for mask, factor in (([True, False, False], 1), ([False, True, False], 1), ([True, True, False], 2)):
            counted = count_dispatches(
                lambda w=weight, g=groups, m=mask, d=grad: torch.ops.aten.convolution_backward(
                    d, x, w, None, [1, 1], [1, 1], [1, 1], False, [0, 0], g, m
                )
            ).flops
            assert counted == factor * forward


@pytest.mark.parametrize("dims", [2, 3])
def test_a_dints_step_reads_nothing_back_but_adams_counters(dims):
    """What a CUDA graph needs of a step (execution.capture_steps): no host sync inside it. A DiNTS
    weight step has none; its architecture step only the plain Adam's step counters (CPU tensors unless
    the optimizer is capturable, as captured steps make it)."""
    from autodeeplab.config.settings import load_config
    from autodeeplab.search.spaces import space_builder

    overrides = ["search_space=dints", "dints.depths=2", "dints.blocks=2", "dints.channels=4"]
    overrides += [f"space.spatial_dims={dims}", "data.crop_size=16", "batch_size=2", "device=cpu"]
    config = load_config(SearchConfig, "cpu", overrides=overrides)
    model = space_builder(config)(config, 3, 1 if dims == 3 else 3)
    shape = (1, 16, 16, 16) if dims == 3 else (3, 32, 32)
    counts = count_search_steps(model, config, torch.device("cpu"), shape, 3, flops=False)
    assert counts["weight"]["syncs"] == 0
    assert counts["arch"]["ops"].get("_local_scalar_dense", 0) == counts["arch"]["syncs"] == 2
