"""execution.capture_steps on a CUDA GPU: each step replayed from a CUDA graph equals the eager step.

Skipped without CUDA (CI has none); ``benchmarks/gpu_check.sh`` runs this file on a lent GPU. The CPU
counterpart (``test_search.py::test_captured_steps_give_the_same_search_bit_for_bit``) checks the
static-buffer plumbing bit for bit; here the graphs themselves run: three eager warm-up steps, then a
capture, the weight and architecture graphs sharing one memory pool.

Why step by step and not two whole searches: some CUDA backward kernels accumulate with atomics (bilinear
upsampling, overlapping max pooling), so two eager runs differ in the last bits, and a small supernet
trained on tiny batches amplifies that fast (on the CPU, the contiguous and channels-last layouts give
first losses 3.6e-7 apart and second losses 1.3e-4 apart; two seeded eager searches on an H200 differed
by 0.02 in their first epoch's mean loss). So before every step the captured model is given the eager
model's state (parameters, buffers, optimizer states, copied in place: the graph reads them where they
lie), both run the step on the same batch, and what each step did is compared: the loss and the change
of every tensor it writes (parameters, BN running statistics, momentum, Adam's moments and counters),
against a tolerance set by the same comparison between two eager models. Midway both are reset, as at an
epoch's start, so the recapture (into the weight graph's new memory pool) is checked too.
"""

from __future__ import annotations

import copy

import pytest
import torch

from autodeeplab.config.settings import load_config
from autodeeplab.fast.capture import StepGraph
from autodeeplab.ops.losses import make_loss
from autodeeplab.search.config import SearchConfig
from autodeeplab.search.spaces import space_builder
from autodeeplab.search.steps import make_optimizers, step_runners

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (runs on a lent one)")

CLASSES, STEPS = 5, 7  # steps 3.. are replays (StepGraph's three warm-up steps run eagerly)
RECAPTURE_AT = 5  # the graphs are captured at step 3 and again at step 5


def _config(device: str, precision: str, capture: bool) -> SearchConfig:
    settings = {
        "space.filter_multiplier": "4",
        "space.num_layers": "4",
        "data.crop_size": "64",
        "batch_size": "2",
        "device": device,
        "execution.precision": precision,
        "execution.capture_steps": str(capture).lower(),
    }
    return load_config(SearchConfig, preset="cpu", overrides=[f"{k}={v}" for k, v in settings.items()])


class _Searcher:
    """One supernet with its optimizers and its two step runners (plain or captured)."""

    def __init__(self, model: torch.nn.Module, config: SearchConfig) -> None:
        self.model = model
        self.opts = make_optimizers(model, config)[:2]
        criterion = make_loss("ce", 255)
        self.steps = step_runners(model, *self.opts, criterion, config)

    def tensors(self) -> list[torch.Tensor]:
        """Every tensor a step reads and writes, in a fixed order: parameters, buffers, optimizer states."""
        out = [*self.model.parameters(), *self.model.buffers()]
        for opt in self.opts:
            for group in opt.param_groups:
                for p in group["params"]:
                    state = opt.state.get(p, {})
                    out += [state[k] for k in sorted(state) if torch.is_tensor(state[k])]
        return out

    def load_from(self, other: _Searcher) -> None:
        """Copy ``other``'s state into this one's tensors in place (a graph reads them where they lie)."""
        mine, theirs = self.tensors(), other.tensors()
        assert len(mine) == len(theirs)
        with torch.no_grad():
            for a, b in zip(mine, theirs, strict=True):
                a.copy_(b)


def _step_difference(a: _Searcher, b: _Searcher, which: int, images, masks) -> tuple[float, float]:
    """Run step ``which`` (0 weight, 1 arch) on both from ``a``'s state; (loss gap, worst relative gap of
    the change a step made to any tensor it writes — parameters, BN statistics, momentum, Adam's moments
    and counters: ‖Δa − Δb‖ / ‖Δa‖, or inf where ``b`` changed what ``a`` left alone)."""
    b.load_from(a)  # both took the same steps, so their optimizer states hold the same tensors
    before = [t.detach().to(torch.float64, copy=True) for t in a.tensors()]
    loss_a = a.steps[which](images, masks)
    loss_b = b.steps[which](images, masks)
    after_a, after_b = a.tensors(), b.tensors()
    assert len(after_a) == len(after_b)
    if len(before) != len(after_a):  # an optimizer's first step made its state: compare values from zero
        before = [torch.zeros((), dtype=torch.float64) for _ in after_a]
    # the norms on the device and one read back per step (~6k tensors: one sync each would take seconds)
    norms = []
    for t0, ta, tb in zip(before, after_a, after_b, strict=True):
        da = ta.detach().to(torch.float64) - t0.to(ta.device)
        db = tb.detach().to(ta.device, torch.float64) - t0.to(ta.device)  # Adam's counters: CPU eagerly
        norms.append(torch.stack([da.norm(), (da - db).norm(), db.norm()]).to(images.device))
    worst = 0.0
    for na, nd, nb in torch.stack(norms).tolist():
        if na > 0:
            worst = max(worst, nd / na)
        elif nb > 0:
            worst = float("inf")
    return abs(float(loss_a) - float(loss_b)), worst


def _compare(
    precision: str, captured: bool, device: str = "cuda", steps: int = STEPS
) -> list[tuple[int, str, float, float]]:
    """(step, "weight"/"arch", loss gap, state-change gap) of an eager searcher against a second one,
    captured or eager, step by step (on a CPU the captured one runs StepGraph's static path, no graph).
    Before step ``RECAPTURE_AT`` both runners are reset, as the loop does at an epoch's start: the
    captured one captures both graphs again, the architecture graph in the weight graph's new pool."""
    torch.manual_seed(0)
    eager_cfg = _config(device, precision, capture=False)
    model = space_builder(eager_cfg)(eager_cfg, CLASSES, 3).to(device)
    a = _Searcher(model, eager_cfg)
    b = _Searcher(copy.deepcopy(model), _config(device, precision, capture=captured))
    gen = torch.Generator().manual_seed(1)
    gaps = []
    for step in range(steps):
        images = torch.randn(2, 3, 64, 64, generator=gen).to(device)
        masks = torch.randint(0, CLASSES, (2, 64, 64), generator=gen).to(device)
        if step == RECAPTURE_AT:
            for runner in (*a.steps, *b.steps):
                runner.reset()
        for which, name in ((0, "weight"), (1, "arch")):
            gaps.append((step, name, *_step_difference(a, b, which, images, masks)))
    return gaps


TOLERANCE = {"fp32": (1e-5, 1e-4), "bf16": (1e-3, 1e-2)}  # (loss, state change) floors


def test_the_step_by_step_harness_on_cpu():
    """Keeps the harness runnable where CI runs: on a CPU the captured searcher takes StepGraph's static
    path, so every step equals the eager one bit for bit."""
    gaps = _compare("fp32", captured=True, device="cpu", steps=2)
    assert len(gaps) == 4 and all(g[2] == 0 and g[3] == 0 for g in gaps), gaps


@needs_cuda
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_each_captured_step_equals_the_eager_step(monkeypatch, precision):
    captures = []
    real_capture = StepGraph._capture

    def counting_capture(self, images, masks):
        captures.append(images.shape)
        real_capture(self, images, masks)

    monkeypatch.setattr(StepGraph, "_capture", counting_capture)
    control = _compare(precision, captured=False)
    assert not captures
    captured = _compare(precision, captured=True)
    assert len(captures) == 4, captures  # the weight graph and the arch graph, at steps 3 and 5
    loss_floor = max(TOLERANCE[precision][0], 10 * max(c[2] for c in control))
    param_floor = max(TOLERANCE[precision][1], 10 * max(c[3] for c in control))
    for (step, name, loss_gap, param_gap), (_, _, c_loss, c_param) in zip(captured, control, strict=True):
        replay = "replayed" if step >= 3 else "warm-up"
        print(
            f"{precision} step {step} {name} ({replay}): loss gap {loss_gap:.2g} "
            f"(eager vs eager {c_loss:.2g}), state change gap {param_gap:.2g} "
            f"(eager vs eager {c_param:.2g})"
        )
        assert loss_gap <= loss_floor, (step, name, loss_gap, loss_floor)
        assert param_gap <= param_floor, (step, name, param_gap, param_floor)
