"""The fused SGD step gives what the default loop gives; checkpoints keep the resuming side's choice."""

import pytest
import torch
from torch import nn

from autodeeplab.optim import load_optimizer_state, sgd
from autodeeplab.search.config import SearchConfig
from autodeeplab.search.loop import make_optimizers, weight_step
from autodeeplab.space.autodeeplab.supernet import SearchNetwork, SearchSpaceConfig

OPTIONS = {"lr": 0.05, "momentum": 0.9, "weight_decay": 3e-4}


def _params(seed: int = 0) -> list[nn.Parameter]:
    g = torch.Generator().manual_seed(seed)
    shapes = [(8, 1, 3, 3), (8, 8, 1, 1), (4, 8, 3, 3), (8,), (1, 1, 5, 5)]
    return [nn.Parameter(torch.randn(s, generator=g)) for s in shapes]


def _run(optimizer: torch.optim.Optimizer, params: list[nn.Parameter], steps: int = 3) -> None:
    g = torch.Generator().manual_seed(1)
    for _ in range(steps):
        for p in params:
            p.grad = torch.randn(p.shape, generator=g)
        params[3].grad = None  # a parameter without a gradient this step (frozen or unused) stays put
        optimizer.step()


def test_fused_step_equals_the_default_loop():
    fused, loop = _params(), _params()
    opt_fused, opt_loop = sgd(fused, **OPTIONS), sgd(loop, fused=False, **OPTIONS)
    assert not opt_loop.param_groups[0].get("fused")
    _run(opt_fused, fused)
    _run(opt_loop, loop)
    for a, b in zip(fused, loop, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)
    assert torch.equal(fused[3], _params()[3])  # never had a gradient
    assert not torch.equal(fused[0], _params()[0])


def test_fused_is_used_where_torch_has_it():
    torch_version = tuple(int(x) for x in torch.__version__.split("+")[0].split(".")[:2])
    if torch_version < (2, 4):
        pytest.skip("torch < 2.4 has no fused SGD on CPU")
    assert sgd(_params(), **OPTIONS).param_groups[0]["fused"] is True


def test_falls_back_to_the_loop_where_fused_is_refused(monkeypatch):
    real = torch.optim.SGD

    def no_fused(params, fused=None, **options):
        if fused:
            raise RuntimeError("`fused=True` requires all the params to be of supported devices")
        return real(params, **options)

    monkeypatch.setattr(torch.optim, "SGD", no_fused)
    optimizer = sgd(_params(), **OPTIONS)
    assert isinstance(optimizer, real) and not optimizer.param_groups[0].get("fused")


def test_loading_a_state_keeps_this_optimizers_implementation():
    written, resumed = _params(), _params()
    opt_written = sgd(written, **OPTIONS)
    _run(opt_written, written)
    opt_resumed = sgd(resumed, fused=False, **OPTIONS)
    load_optimizer_state(opt_resumed, opt_written.state_dict())
    assert not opt_resumed.param_groups[0].get("fused")  # the writer's flag is not taken over
    assert opt_resumed.param_groups[0]["momentum"] == OPTIONS["momentum"]
    for p_w, p_r in zip(written, resumed, strict=True):  # momentum buffers came along
        state_w, state_r = opt_written.state[p_w], opt_resumed.state[p_r]
        if "momentum_buffer" in state_w and state_w["momentum_buffer"] is not None:
            assert torch.equal(state_w["momentum_buffer"], state_r["momentum_buffer"])


@pytest.mark.parametrize("layout", [torch.channels_last, torch.channels_last_3d])
def test_a_state_saved_in_another_layout_is_resumed_correctly(layout):
    """A 3D network trains channels-last on a CPU and contiguous on a GPU; resumed on the other, its
    momentum buffers arrive in the other layout, which the fused kernel would read as a flat array against
    the parameter's (wrong updates, no error). After loading, the steps equal an uninterrupted run's."""
    shape = (6, 4, 3, 3) if layout == torch.channels_last else (6, 4, 3, 3, 3)
    torch.manual_seed(0)
    start, grads = torch.randn(shape), [torch.randn(shape) for _ in range(3)]

    def steps(p, opt, gs):
        for g in gs:
            p.grad = torch.empty_like(p).copy_(g)  # a gradient has its parameter's layout
            opt.step()

    straight = nn.Parameter(start.clone())  # contiguous, never interrupted
    opt_straight = sgd([straight], **OPTIONS)
    steps(straight, opt_straight, grads)

    written = nn.Parameter(start.clone())  # the GPU's run: one step, then a checkpoint
    opt_written = sgd([written], **OPTIONS)
    steps(written, opt_written, grads[:1])
    resumed = nn.Parameter(written.detach().clone().contiguous(memory_format=layout))  # the CPU's
    opt_resumed = sgd([resumed], **OPTIONS)
    load_optimizer_state(opt_resumed, opt_written.state_dict())
    assert opt_resumed.state[resumed]["momentum_buffer"].stride() == resumed.stride()
    steps(resumed, opt_resumed, grads[1:])
    torch.testing.assert_close(resumed.detach(), straight.detach())


def test_a_captured_runs_adam_state_resumes_in_a_plain_adam():
    """A search with captured steps keeps Adam ``capturable`` (step counters on the GPU); resumed without
    them (on a CPU, say), the checkpoint's flag must not come along: a capturable Adam on CPU parameters
    stops at its first step. The resumed steps equal an uninterrupted run's."""
    torch.manual_seed(0)
    start = [torch.randn(5, 3), torch.randn(4)]
    grads = [[torch.randn_like(t) for t in start] for _ in range(3)]

    def run(params, opt, steps):
        for gs in steps:
            for p, g in zip(params, gs, strict=True):
                p.grad = g.clone()
            opt.step()

    straight = [nn.Parameter(t.clone()) for t in start]
    run(straight, torch.optim.Adam(straight, lr=0.01), grads)
    written = [nn.Parameter(t.clone()) for t in start]
    opt_written = torch.optim.Adam(written, lr=0.01)
    run(written, opt_written, grads[:1])
    state = opt_written.state_dict()
    state["param_groups"][0]["capturable"] = True  # as the captured run recorded it
    resumed = [nn.Parameter(p.detach().clone()) for p in written]
    opt_resumed = torch.optim.Adam(resumed, lr=0.01)
    load_optimizer_state(opt_resumed, state)
    assert opt_resumed.param_groups[0]["capturable"] is False
    assert all(opt_resumed.state[p]["step"].device.type == "cpu" for p in resumed)
    run(resumed, opt_resumed, grads[1:])
    for a, b in zip(resumed, straight, strict=True):
        torch.testing.assert_close(a.detach(), b.detach())
    # the other way: this run's capturable flag stays, its counters float32 beside the parameters
    again = torch.optim.Adam([nn.Parameter(t.clone()) for t in start], lr=0.01, capturable=True)
    load_optimizer_state(again, opt_written.state_dict())
    assert again.param_groups[0]["capturable"] is True
    assert all(s["step"].dtype == torch.float32 for s in again.state.values())


def test_search_weight_step_same_with_and_without_fused_sgd():
    def net():
        torch.manual_seed(0)
        cfg = SearchSpaceConfig(filter_multiplier=2, num_layers=3, num_blocks=2, stem_channels=(4, 4, 8))
        return SearchNetwork(cfg, num_classes=3)

    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(2, 3, 32, 32, generator=g), torch.randint(0, 3, (2, 32, 32), generator=g)
    config = SearchConfig()
    nets = [net(), net()]
    fused_opt = make_optimizers(nets[0], config)[0]
    options = {"lr": config.lr, "momentum": config.momentum, "weight_decay": config.weight_decay}
    loop_opt = sgd(nets[1].weight_parameters(), fused=False, **options)
    for model, opt in zip(nets, (fused_opt, loop_opt), strict=True):
        for _ in range(2):
            weight_step(model, x, y, opt, nn.CrossEntropyLoss(), config.grad_clip)
    for a, b in zip(nets[0].weight_parameters(), nets[1].weight_parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
