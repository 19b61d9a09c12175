"""The search's two steps and what runs them: the weight step on trainA, the architecture step on trainB
(first order, as the paper), their optimizers, the CUDA-graph runners, and the losses read back in batches.

In a distributed run (``world`` > 1) each step averages the gradients of its own parameter group over the
ranks between its backward and its optimizer step, so that every rank applies the same update.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator

import torch
from torch import nn

from autodeeplab.fast.capture import StepGraph
from autodeeplab.fast.execution import Precision
from autodeeplab.fast.precision import autocast, backward_and_step
from autodeeplab.ops.losses import split_loss
from autodeeplab.optim import sgd
from autodeeplab.runs.distributed import average_gradients, mean_over_ranks, sum_over_ranks
from autodeeplab.runs.progress import Progress
from autodeeplab.runs.state import check_finite
from autodeeplab.search.config import SearchConfig
from autodeeplab.search.state import SearchPosition
from autodeeplab.space.contract import SearchSpace


def step_runners(
    model: SearchSpace,
    weight_opt: torch.optim.Optimizer,
    arch_opt: torch.optim.Optimizer,
    criterion: nn.Module,
    config: SearchConfig,
    world: int = 1,
) -> tuple[Callable, Callable]:
    """The weight step and the architecture step as ``(images, masks) -> loss`` calls: plain, or replayed
    from CUDA graphs with ``execution.capture_steps`` (:class:`~autodeeplab.fast.capture.StepGraph`; the
    architecture step shares the weight step's memory pool, as they always run in that order)."""
    precision = config.execution.precision

    def w_step(images: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        return weight_step(model, images, masks, weight_opt, criterion, config.grad_clip, precision, world)

    def a_step(images: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        return arch_step(model, images, masks, arch_opt, criterion, precision, world)

    if not config.execution.capture_steps:
        return _Plain(w_step), _Plain(a_step)
    w_graph = StepGraph(w_step)
    return w_graph, StepGraph(a_step, pool=w_graph)


class _Plain:
    """A step called as it is (the :class:`StepGraph` interface without a graph)."""

    def __init__(self, step: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> None:
        self.step = step

    def reset(self) -> None:
        pass

    def __call__(self, images: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        return self.step(images, masks)


class PendingLosses:
    """The losses of the steps since the last host sync, as device tensors (``SYNC_EVERY``)."""

    def __init__(self, world: int = 1) -> None:
        self.steps: list[tuple[dict[str, int], torch.Tensor, torch.Tensor | None]] = []
        self.world = world

    def add(self, where: dict[str, int], w_loss: torch.Tensor, a_loss: torch.Tensor | None) -> None:
        self.steps.append((where, w_loss, a_loss))

    def flush(self, position: SearchPosition, progress: Progress) -> None:
        """Read the losses in one transfer, check them in step order (a non-finite one names its own step)
        and add them to the epoch sums as per-step floats would be (the same float64 additions)."""
        if not self.steps:
            return
        stacked = torch.stack([x.double() for _, w, a in self.steps for x in (w, a) if x is not None])
        values = mean_over_ranks(stacked, self.world).tolist()  # the global batch's loss on every rank
        shown: dict[str, float] = {}
        for where, _, a_loss in self.steps:
            shown["loss"] = values.pop(0)
            check_finite(shown["loss"], "weight-step loss", **where)
            position.w_loss_sum += shown["loss"]
            if a_loss is not None:
                shown["arch_loss"] = values.pop(0)
                check_finite(shown["arch_loss"], "architecture-step loss", **where)
                position.a_loss_sum += shown["arch_loss"]
        self.steps.clear()
        progress.update(0, **shown)


# -- the two steps ----------------------------------------------------------------------------------
@contextlib.contextmanager
def frozen(parameters: Iterable[nn.Parameter]) -> Iterator[None]:
    """Temporarily stop gradients for ``parameters``: autograd then neither computes nor stores
    anything for them, which is both the correctness guarantee (the step cannot move them) and a saving.
    """
    params = [p for p in parameters if p.requires_grad]
    for p in params:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p in params:
            p.requires_grad_(True)


def _training_mode(model: nn.Module) -> None:
    """``model.train()`` unless it is in training mode already: the call visits every module (~80 ms for
    the paper's supernet, twice per iteration), and between evaluations nothing leaves training mode."""
    if not model.training:
        model.train()


def shard_loss(criterion: nn.Module, logits: torch.Tensor, masks: torch.Tensor, world: int) -> torch.Tensor:
    """The loss of this rank's shard: ``criterion(logits, masks)`` in one process; with ``world`` ranks its
    share of the global batch's loss (:func:`~autodeeplab.ops.losses.split_loss`, the counts summed over the
    ranks) times ``world``, so that the averaged gradient is the global batch's, however the ignored pixels
    fall between the shards."""
    if world == 1:
        return criterion(logits, masks)
    counts = sum_over_ranks(criterion.counts(masks), world)
    return split_loss(criterion, logits, masks, counts) * world


def weight_step(
    model: SearchSpace,
    images: torch.Tensor,
    masks: torch.Tensor,
    optimizer: torch.optim.Optimizer,
    criterion: nn.Module,
    grad_clip: float,
    precision: Precision = "fp32",
    world: int = 1,
) -> torch.Tensor:
    """One SGD step on the network weights with a trainA batch ``[N, C, *S]``/``[N, *S]``; α and β do not
    move. Runs in ``precision`` (autocast; fp16 with a gradient scaler), ``execution.precision`` of the run.
    Returns the loss, a 0-dim tensor on the device (reading it is a host sync: the loop batches them).
    """
    _training_mode(model)
    device_type = images.device.type
    with frozen(model.arch_parameters()):
        optimizer.zero_grad(set_to_none=True)
        with autocast(precision, device_type):
            loss = shard_loss(criterion, model(images), masks, world)
        weights = list(model.weight_parameters())
        average = (lambda: average_gradients(weights, world)) if world > 1 else None
        backward_and_step(loss, optimizer, precision, device_type, weights, grad_clip, average)
    return loss.detach()


def arch_step(
    model: SearchSpace,
    images: torch.Tensor,
    masks: torch.Tensor,
    optimizer: torch.optim.Optimizer,
    criterion: nn.Module,
    precision: Precision = "fp32",
    world: int = 1,
) -> torch.Tensor:
    """One Adam step on the architecture parameters with a trainB batch (first order); the weights do not
    move. The loss is the cross-entropy plus the space's :meth:`~SearchSpace.arch_loss_terms` (none for
    the paper's Auto-DeepLab); the value returned is that total (0-dim, on the device)."""
    _training_mode(model)
    device_type = images.device.type
    with frozen(model.weight_parameters()):
        optimizer.zero_grad(set_to_none=True)
        with autocast(precision, device_type):
            loss = shard_loss(criterion, model(images), masks, world)
            for term in model.arch_loss_terms().values():
                loss = loss + term
        arch = list(model.arch_parameters())
        average = (lambda: average_gradients(arch, world)) if world > 1 else None
        backward_and_step(loss, optimizer, precision, device_type, after_backward=average)
    return loss.detach()


def make_optimizers(
    model: SearchSpace, config: SearchConfig
) -> tuple[torch.optim.Optimizer, torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
    weight_opt = sgd(
        model.weight_parameters(), lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay
    )
    arch = list(model.arch_parameters())
    # a captured step cannot read Adam's step counters on the host: capturable keeps them on the device
    capturable = config.execution.capture_steps and arch[0].device.type == "cuda"
    arch_opt = torch.optim.Adam(
        arch,
        lr=config.arch_lr,
        betas=config.arch_betas,
        weight_decay=config.arch_weight_decay,
        capturable=capturable,
    )
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(
        weight_opt, T_max=config.epochs, eta_min=config.lr_min
    )
    return weight_opt, arch_opt, scheduler
