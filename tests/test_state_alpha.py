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


@pytest.mark.parametrize("batch", [1, 2])
@pytest.mark.parametrize("fold", [True, False])
@pytest.mark.parametrize(("k", "group_rows"), [(1, False), (1, True), (3, False)])
def test_fused_edge_sums_give_channels_last_gradients_in_canonical_strides(batch, fold, k, group_rows):
    """The fused edges' sum is laid out in the channels-last memory order, ``[N, *S, (K,) E, C]`` rows,
    each edge's result a slice of it, so that every gradient that comes back is channels-last with the
    canonical strides: the convs' and the pools' batch norms' and the input state's. (Broadcast over E in
    another order, the weightless terms' gradients came back contiguous, the pools' BN backward 2-4× slower;
    with a batch of one, in a stride that torch 2.13's CPU batch-norm backward misreads: wrong gradients.)"""
    from autodeeplab.fast import grouped_bn
    from autodeeplab.fast.fused_edges import fused_mixed_ops
    from autodeeplab.fast.pointwise import to_rows
    from autodeeplab.space.autodeeplab.cell import MixedOp

    torch.manual_seed(0)
    c, edges = 4, [MixedOp(4).train() for _ in range(3)]
    x = torch.randn(batch, k * c, 6, 5).contiguous(memory_format=torch.channels_last).requires_grad_()
    weights = torch.randn(3, 8).softmax(-1).requires_grad_(not fold)
    grads_seen = []

    def recording(real):
        def bn(z, *args, **kwargs):  # the gradient arriving at each batch norm
            out = real(z, *args, **kwargs)
            if out.requires_grad:
                out.register_hook(grads_seen.append)
            return out

        return bn

    def canonical(g: torch.Tensor) -> bool:
        return g.stride() == torch.empty(g.shape, memory_format=torch.channels_last).stride()

    execution = ExecutionConfig(fold_alpha_into_bn=fold)
    with pytest.MonkeyPatch.context() as m:
        for name in ("multi_batch_norm", "shared_batch_norm"):
            m.setattr(f"autodeeplab.fast.fused_edges.{name}", recording(getattr(grouped_bn, name)))
        outs = fused_mixed_ops(x, edges, weights, execution, channel_groups=k, group_rows=group_rows)
        sum(o.square().sum() for o in outs).backward()
    if group_rows:  # [N, *S, 1, C] each: a term for every channel group of a node
        assert all(o.shape == (batch, 6, 5, 1, c) for o in outs)
        outs = [o.squeeze(-2) for o in outs]
    rows = [o if k > 1 or group_rows else to_rows(o) for o in outs]  # [N, *S, (K,) C] each
    whole = rows[0]._base  # the sum, [N, *S, (K,) E, C]
    assert whole.is_contiguous() and all(r._base is whole for r in rows)
    assert len(grads_seen) == 8  # the 2 pools', the 4 conv primitives' last and the sep convs' first BNs
    assert all(canonical(g) for g in grads_seen)
    assert canonical(x.grad)
