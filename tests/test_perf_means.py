"""Two means of the fast search change no result: ``none`` edges are skipped instead of evaluated as zeros,
and each step freezes the other parameter group instead of computing and dropping its gradients.

Float64, like tests/test_perf_exactness.py: an exact reordering then agrees to ~1e-12."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from autodeeplab.fast.cell import mixed_op
from autodeeplab.fast.execution import ExecutionConfig
from autodeeplab.fast.memory import SavedTensorCounter
from autodeeplab.fast.supernet import build_supernet
from autodeeplab.ops.primitives import PRIMITIVES, Zero
from autodeeplab.search.config import SearchConfig
from autodeeplab.search.loop import arch_step, make_optimizers, weight_step
from autodeeplab.space.autodeeplab.cell import MixedOp
from autodeeplab.space.autodeeplab.supernet import SearchNetwork, SearchSpaceConfig

TOL = {"atol": 1e-12, "rtol": 1e-10}
NONE = PRIMITIVES.index("none")


def with_explicit_none(op: MixedOp) -> MixedOp:
    """A copy of ``op`` that also evaluates ``none`` as an op module (zeros weighted by w_none)."""
    explicit = copy.deepcopy(op)
    explicit.ops.insert(0, Zero(1))
    explicit.op_indices = (NONE, *op.op_indices)
    return explicit


def run_op(op: MixedOp, x: torch.Tensor, logits: torch.Tensor, execution: ExecutionConfig | None):
    """Output ``[N, C, H, W]``, gradients of x, of the α logits ``[P]`` and of the op's parameters, and
    the bytes saved for the backward; ``execution`` None: the reference ``op(x, weights)``."""
    x, logits = x.clone().requires_grad_(), logits.clone().requires_grad_()
    weights = torch.softmax(logits, 0)
    with SavedTensorCounter(exclude=[*op.parameters(), *op.buffers(), weights]) as counter:
        out = op(x, weights) if execution is None else mixed_op(op, x, weights, execution)
    (out * torch.linspace(-1, 1, out.numel(), dtype=out.dtype).view_as(out)).sum().backward()
    return out.detach(), x.grad, logits.grad, [p.grad for p in op.parameters()], counter.total_bytes


UNSHARED = ExecutionConfig(share_edge_relu=False, pool_without_indices=False, fold_alpha_into_bn=False)


@pytest.mark.parametrize(
    "execution", [None, ExecutionConfig(), UNSHARED], ids=["reference", "fast", "unshared"]
)
def test_skipping_none_equals_an_explicit_zero_op(execution):
    torch.manual_seed(0)
    op = MixedOp(4, affine=True).double().train()
    explicit = with_explicit_none(op)
    assert len(explicit.ops) == len(PRIMITIVES) == len(op.ops) + 1
    x = torch.randn(2, 4, 9, 9, dtype=torch.float64)
    logits = torch.randn(len(PRIMITIVES), dtype=torch.float64)
    logits[NONE] = 3.0  # a large none weight: skipping it must still change nothing
    skipped, evaluated = run_op(op, x, logits, execution), run_op(explicit, x, logits, execution)
    assert torch.allclose(skipped[0], evaluated[0], **TOL)
    assert torch.allclose(skipped[1], evaluated[1], **TOL)  # d/dx
    assert torch.allclose(skipped[2], evaluated[2], **TOL)  # d/dα, including none's own logit
    assert skipped[2][NONE] != 0  # none's logit still gets the softmax's gradient
    for a, b in zip(skipped[3], evaluated[3], strict=True):
        assert torch.allclose(a, b, **TOL)
    # and skipping is what saves: the explicit op keeps its zero output for w_none's gradient
    assert evaluated[4] - skipped[4] >= x.numel() * x.element_size()


def tiny_net() -> SearchNetwork:
    torch.manual_seed(0)
    space = SearchSpaceConfig(filter_multiplier=2, num_layers=3, num_blocks=2, stem_channels=(4, 4, 8))
    net = build_supernet(space, num_classes=3)  # the fast path, as the search runs it
    with torch.no_grad():
        net.alpha.normal_()
        net.beta.normal_()
    return net.double()


def batch(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(2, 3, 29, 29, generator=g, dtype=torch.float64), torch.randint(
        0, 3, (2, 29, 29), generator=g
    )


def unfrozen_step(net, x, y, optimizer, moved: list[nn.Parameter], grad_clip: float) -> None:
    """What the public implementation does: gradients for every parameter, the other group's dropped."""
    net.train()
    optimizer.zero_grad(set_to_none=True)
    net.zero_grad(set_to_none=True)
    nn.functional.cross_entropy(net(x), y).backward()
    moving = {id(p) for p in moved}
    others = [p for p in net.parameters() if id(p) not in moving]
    assert all(p.grad is not None for p in others)  # computed ...
    for p in others:
        p.grad = None  # ... and dropped
    if grad_clip > 0:
        nn.utils.clip_grad_norm_(moved, grad_clip)
    optimizer.step()


def assert_same(net: SearchNetwork, ref: SearchNetwork) -> None:
    for (name, p), (_, q) in zip(net.named_parameters(), ref.named_parameters(), strict=True):
        assert torch.allclose(p, q, **TOL), f"parameter {name}"
    for (name, b), (_, c) in zip(net.named_buffers(), ref.named_buffers(), strict=True):
        assert torch.allclose(b.double(), c.double(), **TOL), f"buffer {name}"


def test_frozen_weight_step_equals_unfrozen_step_without_arch_gradients():
    frozen_net = tiny_net()
    unfrozen_net = copy.deepcopy(frozen_net)
    start_alpha = frozen_net.alpha.detach().clone()
    config = SearchConfig(grad_clip=0.5)  # small enough to clip: the norm covers the weights only
    opt_f, _, _ = make_optimizers(frozen_net, config)
    opt_u, _, _ = make_optimizers(unfrozen_net, config)
    criterion = nn.CrossEntropyLoss()
    for seed in (1, 2):  # the second step uses SGD momentum from the first
        x, y = batch(seed)
        weight_step(frozen_net, x, y, opt_f, criterion, config.grad_clip)
        unfrozen_step(unfrozen_net, x, y, opt_u, list(unfrozen_net.weight_parameters()), config.grad_clip)
        assert frozen_net.alpha.grad is None  # frozen: never even computed
    assert_same(frozen_net, unfrozen_net)
    assert torch.equal(frozen_net.alpha, start_alpha)
    assert not torch.allclose(frozen_net.stem[0].weight, tiny_net().stem[0].weight)  # the weights moved


def test_frozen_arch_step_equals_unfrozen_step_without_weight_gradients():
    frozen_net = tiny_net()
    unfrozen_net = copy.deepcopy(frozen_net)
    start_weight = frozen_net.stem[0].weight.detach().clone()
    _, opt_f, _ = make_optimizers(frozen_net, SearchConfig())
    _, opt_u, _ = make_optimizers(unfrozen_net, SearchConfig())
    criterion = nn.CrossEntropyLoss()
    for seed in (3, 4):  # the second step uses Adam's moments from the first
        x, y = batch(seed)
        arch_step(frozen_net, x, y, opt_f, criterion)
        unfrozen_step(unfrozen_net, x, y, opt_u, unfrozen_net.arch_parameters(), 0.0)
        assert all(p.grad is None for p in frozen_net.weight_parameters())
    assert_same(frozen_net, unfrozen_net)
    assert torch.equal(frozen_net.stem[0].weight, start_weight)
    assert not torch.allclose(frozen_net.alpha, tiny_net().alpha)  # α moved
