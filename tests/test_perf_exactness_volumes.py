"""The exactness contract of :mod:`test_perf_exactness` where its grid does not reach: volumes with each
switch toggled away from the shipped defaults, and ``groups_in_channels`` with only the three switches it
needs (the grid's pairs start from every switch off, where it does nothing, or from the defaults, where
six others are on)."""

from __future__ import annotations

import functools

import pytest
import torch
from test_perf_exactness import (
    FACTORS,
    FULL,
    OFF,
    TOL,
    assert_same_results,
    fast_net,
    make_reference,
    reference_run,
    restore,
    run,
    settings,
    tiny_space,
)
from torch import nn

from autodeeplab.fast.execution import ExecutionConfig
from autodeeplab.fast.supernet import build_supernet

VOLUME = {"spatial_dims": 3, "num_layers": 2, "num_levels": 2}
"""Four nodes of up to two incoming resolutions, on 9×7×11 volumes (odd and unequal sides)."""


def test_groups_in_channels_with_only_the_switches_it_needs_changes_no_result():
    needs = ("batch_node_inputs", "fuse_edges", "repeat_separable_input")
    execution = {**OFF, **dict.fromkeys(needs, True), "groups_in_channels": True}
    state, expected = reference_run(**FULL)
    net = fast_net(**FULL)
    restore(net, state)
    net.execution = ExecutionConfig(**execution)
    assert_same_results(run(net), expected)


@functools.cache
def volume_reference(**space) -> tuple[dict[str, torch.Tensor], list[torch.Tensor]]:
    """The reference's state and what it computes on a volume batch: the training output, every gradient,
    the buffers after it, the evaluation output."""
    ref = make_reference(tiny_space(**VOLUME, **space))
    state = {k: v.clone() for k, v in ref.state_dict().items()}
    return state, volume_results(ref)


def volume_results(net: nn.Module) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(2)
    x = torch.randn(2, 3, 9, 7, 11, generator=g, dtype=torch.float64)
    y = torch.randint(0, 3, (2, 9, 7, 11), generator=g)
    net.train()
    out = net(x)
    nn.functional.cross_entropy(out, y).backward()
    results = [out.detach(), *(p.grad for p in net.parameters()), *(b.double() for b in net.buffers())]
    net.eval()
    with torch.no_grad():
        results.append(net(x))
    return results


@pytest.mark.parametrize("factor", list(FACTORS), ids=list(FACTORS))
def test_volumes_with_each_switch_away_from_the_defaults_change_no_result(factor):
    execution, space = settings("defaults", (factor,))
    state, expected = volume_reference(**space)
    net = build_supernet(tiny_space(**VOLUME, **space), 3, in_channels=3).double()
    net.load_state_dict(state)
    net.execution = ExecutionConfig(**execution)
    got = volume_results(net)
    assert len(got) == len(expected)
    for index, (a, b) in enumerate(zip(got, expected, strict=True)):
        assert a is not None and torch.allclose(a, b, **TOL), f"{factor}: result {index} differs"
