"""α's per-state columns made once per supernet forward (:class:`autodeeplab.fast.cell.StateAlpha`, issue
16): α is shared by every cell, so every cell reads the same columns; the results are those of the
reference (``tests/test_perf_exactness.py``, every switch and pair, checkpointing included)."""

from __future__ import annotations

import pytest
import torch

from autodeeplab.fast import cell as fast_cell
from autodeeplab.fast.execution import ExecutionConfig
from autodeeplab.fast.supernet import build_supernet
from autodeeplab.space.autodeeplab.supernet import SearchSpaceConfig


def _space() -> SearchSpaceConfig:
    return SearchSpaceConfig(
        filter_multiplier=2, num_layers=3, num_levels=3, num_blocks=2, stem_channels=(2, 2, 4)
    )


def _counting(monkeypatch) -> tuple[list[tuple], list[int]]:
    """Record the keys of the columns made (``alpha_columns`` calls: the state's rows, dtype, channels,
    folding, channel groups) and count the fused calls."""
    made, fused = [], [0]
    real_columns, real_fused = fast_cell.alpha_columns, fast_cell.fused_mixed_ops

    def columns(weights, dtype, channels, fold, k=1):
        made.append((id(weights), dtype, channels, fold, k))  # id: one state's rows, alive all forward
        return real_columns(weights, dtype, channels, fold, k)

    def fused_mixed_ops(*args, **kwargs):
        fused[0] += 1
        return real_fused(*args, **kwargs)

    monkeypatch.setattr(fast_cell, "alpha_columns", columns)
    monkeypatch.setattr(fast_cell, "fused_mixed_ops", fused_mixed_ops)
    return made, fused


@pytest.mark.parametrize("checkpoint", [False, True])
def test_each_states_columns_are_made_once_per_forward_and_found_by_the_recomputation(
    monkeypatch, checkpoint
):
    torch.manual_seed(0)
    net = build_supernet(_space(), 3, execution=ExecutionConfig(checkpoint_cells=checkpoint)).train()
    made, fused = _counting(monkeypatch)
    net(torch.randn(2, 3, 17, 17)).square().mean().backward()  # α learns: no folding for constants
    assert len(made) == len(set(made)), "a state's columns were made twice"
    # 8 nodes × 3 states: far more fused calls than distinct (state, channels, channel groups) keys
    forward_calls = 8 * 3
    assert fused[0] == (2 * forward_calls if checkpoint else forward_calls)  # the recomputation, too
    assert len(made) < forward_calls
    assert net.alpha.grad is not None and net.alpha.grad.abs().sum() > 0
    # a second forward makes them again from the α it reads (not last forward's)
    before = len(made)
    with torch.no_grad():
        net.alpha.add_(1.0)
    net(torch.randn(2, 3, 17, 17))
    assert len(made) == 2 * before


def test_beta_items_index_like_beta_with_the_same_gradient():
    from autodeeplab.fast.supernet import BetaItems

    beta = torch.randn(4, 3, 3, dtype=torch.float64, requires_grad=True)
    items = BetaItems(beta)
    weights = torch.randn(4, 3, 3, dtype=torch.float64)
    indices = [tuple(i) for i in torch.cartesian_prod(*map(torch.arange, beta.shape)).tolist()]
    got = sum(weights[i] * items[i] for i in indices)
    (grad,) = torch.autograd.grad(got, beta)
    for index in [(0, 0, 0), (3, 2, 1), (1, 2, 2), (2, 0, 1)]:
        assert torch.equal(items[index], beta[index])
    assert torch.equal(grad, weights)  # each scalar used once with its weight
