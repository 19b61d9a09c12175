"""The bilevel architecture search (paper §4.2, §5.1): one readable loop with named helpers.

Each weight step (SGD on a trainA batch) is followed, once the warm-up is over, by an architecture
step (Adam on α and β with a trainB batch) — first-order DARTS. The two halves are a seeded random
split of the training set, written to ``split.json`` and reused on resume. After each epoch the
run directory gets ``arch_params.json``, a line of ``arch_history.jsonl``, the decoded
``genotype.json``, a line of ``metrics.jsonl`` and a checkpoint that resumes the run exactly.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from autodeeplab import __version__
from autodeeplab.config.settings import dump_config_yaml
from autodeeplab.data.cityscapes import FULL_SIZE as CITYSCAPES_FULL_SIZE
from autodeeplab.data.splits import record_split
from autodeeplab.data.volume_checks import is_volume_dataset
from autodeeplab.fast.capture import StepGraph
from autodeeplab.fast.execution import Precision
from autodeeplab.fast.precision import autocast, backward_and_step
from autodeeplab.infer.predict import log_prediction_panels
from autodeeplab.ops.losses import make_loss
from autodeeplab.optim import sgd
from autodeeplab.runs.device import resolve_device
from autodeeplab.runs.progress import Progress
from autodeeplab.runs.rundir import RunDir, maybe_tensorboard
from autodeeplab.runs.sampling import CyclePosition, CyclingLoader, batches_per_epoch, epoch_loader
from autodeeplab.runs.state import SYNC_EVERY, GracefulInterrupt, batch_norm_needs_two_values, check_finite
from autodeeplab.search.config import SearchConfig
from autodeeplab.search.data import build_search_data, validation_score
from autodeeplab.search.spaces import SpaceBuilder, space_builder
from autodeeplab.search.state import (
    SearchPosition,
    load_or_make_split,
    load_resume_checkpoint,
    record_epoch,
    restore_checkpoint,
    restore_split,
    save_search_checkpoint,
    write_architecture,
)
from autodeeplab.space.contract import Architecture, SearchSpace, check_search_space

STREAM_A, STREAM_B = 1, 2  # independent batch orders for trainA and trainB


@dataclass
class SearchResult:
    run_dir: Path
    genotype: Architecture
    """The decoded architecture (a :class:`~autodeeplab.space.autodeeplab.genotype.Genotype` for
    Auto-DeepLab)."""
    interrupted: bool = False


# -- the loop ---------------------------------------------------------------------------------------
def run_search(
    config: SearchConfig,
    run_dir: str | Path,
    resume: bool = False,
    quiet: bool = False,
    echo: Callable[[str], None] = print,
    build_space: SpaceBuilder | None = None,
    continue_with: str | None = None,
) -> SearchResult:
    """Search an architecture with ``config``, writing everything into ``run_dir``.

    ``continue_with``: the command line that continues an interrupted or failed run when it is part of a
    larger one (default: ``search --resume``, or the same command for a run that stopped before its first
    checkpoint).

    ``build_space`` makes the supernet (default: the one ``config.search_space`` names); the loop uses it
    only through the :class:`~autodeeplab.space.contract.SearchSpace` contract, so another space plugs in
    here. A resume must pass the same builder.

    On ``resume`` the newest good checkpoint is read first and ``config`` compared with the one it was
    written with: only :data:`autodeeplab.search.state.RESUMABLE_KEYS` may differ (recorded in
    ``config.yaml``). A new run that
    stops before its first checkpoint removes its files (``RunDir.kept_resumable``).
    """
    config.validate()
    build_space = build_space or space_builder(config)
    run = RunDir(run_dir, resume=resume, keep_checkpoints=config.keep_checkpoints)
    single_sample_bn = batch_norm_needs_two_values(config.batch_size)
    with run.kept_resumable("search", continue_with), run.locked(), single_sample_bn:
        return _search(config, run, resume, quiet, echo, build_space)


def _search(
    config: SearchConfig, run: RunDir, resume: bool, quiet: bool, echo, build_space: SpaceBuilder
) -> SearchResult:
    loaded = load_resume_checkpoint(run, config, echo) if resume else None
    device = resolve_device(config.device)
    config.execution.check_device(device.type)  # the rest was validated with the settings
    train_a, train_b, val = build_search_data(config)
    record_split(run.path, train_a)  # a split made by the reader: written, or checked on resume
    if config.data.dataset == "cityscapes" and tuple(train_a.image_size or ()) == CITYSCAPES_FULL_SIZE:
        echo(
            "note: searching on full-resolution Cityscapes; the paper crops from half-resolution images "
            "(make them once: autodeeplab data prepare --data-root ROOT --out HALF --scale 0.5)"
        )
    if loaded is None:
        split = load_or_make_split(run, len(train_a), config)
    else:
        split = restore_split(run, loaded[0].get("split"), loaded[1], len(train_a), config, echo)
    torch.manual_seed(config.seed)
    num_classes = train_a.num_classes
    model = build_space(config, num_classes, getattr(train_a, "in_channels", 3)).to(device)
    check_search_space(model)
    weight_opt, arch_opt, scheduler = make_optimizers(model, config)
    position = SearchPosition()
    if loaded is not None:
        optimizers = (weight_opt, arch_opt, scheduler)
        position = restore_checkpoint(run, loaded, model, optimizers, num_classes, config, echo)
    else:
        dump_config_yaml(
            config, run.path / "config.yaml", {"autodeeplab_version": __version__, "seed": config.seed}
        )
    # Volumes: Dice + cross-entropy, as in their training (the small foreground would drown in plain CE).
    criterion = make_loss("dice_ce" if is_volume_dataset(train_a) else "ce", train_a.ignore_index)
    b_stream = CyclingLoader(
        train_b,
        split["train_b"],
        config.batch_size,
        config.seed,
        STREAM_B,
        config.data.num_workers,
        CyclePosition(position.b_cycle, position.b_batch),
    )
    steps = steps_per_epoch(len(split["train_a"]), config)
    echo(
        f"searching: {len(split['train_a'])} trainA / {len(split['train_b'])} trainB "
        f"{'volumes' if is_volume_dataset(train_a) else 'images'}, "
        f"{steps} steps x {config.epochs} epochs, device {device}, run dir {run.path}"
    )
    tensorboard = maybe_tensorboard(run.path, config.tensorboard, warn=echo)

    def checkpoint() -> None:
        save_search_checkpoint(
            run, model, weight_opt, arch_opt, scheduler, position, config, split, num_classes
        )

    w_graph, a_graph = step_runners(model, weight_opt, arch_opt, criterion, config)
    with GracefulInterrupt() as stop:
        while position.epoch < config.epochs:
            epoch = position.epoch
            searching_arch = epoch >= config.arch_start_epoch
            if hasattr(model, "set_search_progress"):  # optional: a space whose extra terms follow a schedule
                model.set_search_progress(epoch, config.epochs, config.arch_start_epoch)
            # A resume mid-epoch starts the bar at its position, so that rates and the ETA stay right.
            desc = f"epoch {epoch + 1}/{config.epochs}"
            progress = Progress(steps, desc, quiet=quiet, start=position.batch)
            batches = epoch_loader(
                train_a,
                split["train_a"],
                config.batch_size,
                config.seed,
                STREAM_A,
                epoch,
                position.batch,
                config.data.num_workers,
            )
            pending = PendingLosses()
            w_graph.reset(), a_graph.reset()  # the learning rate and the terms' ramps moved
            for images, masks in _take(batches, steps - position.batch):
                where = {"epoch": epoch + 1, "step": position.batch + 1}
                w_loss = w_graph(images.to(device), masks.to(device))
                seen, a_loss = images.shape[0], None
                if searching_arch:
                    b_images, b_masks = b_stream.next()
                    a_loss = a_graph(b_images.to(device), b_masks.to(device))
                    seen += b_images.shape[0]
                    position.a_steps += 1
                pending.add(where, w_loss, a_loss)
                position.batch += 1
                position.global_step += 1
                position.b_cycle, position.b_batch = b_stream.position.cycle, b_stream.position.batch
                progress.update(1, images=seen, lr=scheduler.get_last_lr()[0])
                if len(pending.steps) >= SYNC_EVERY:
                    pending.flush(position, progress)
                if config.checkpoint_every and position.global_step % config.checkpoint_every == 0:
                    pending.flush(position, progress)  # a checkpoint holds only checked steps
                    checkpoint()
                if stop.requested:
                    pending.flush(position, progress)
                    progress.close()
                    checkpoint()
                    echo(
                        f"interrupted: checkpoint saved; resume with `autodeeplab search --resume {run.path}`"
                    )
                    return SearchResult(run.path, model.decode(), interrupted=True)
            pending.flush(position, progress)
            progress.close()
            scheduler.step()
            losses = {"train_loss": position.w_loss_sum / position.batch if position.batch else math.nan}
            if position.a_steps:
                losses["arch_loss"] = position.a_loss_sum / position.a_steps
            position = SearchPosition(
                epoch + 1, 0, position.global_step, position.b_cycle, position.b_batch
            )  # the sums start again
            scores = validation_score(model, val, config, device, quiet)
            if tensorboard is not None and not is_volume_dataset(val):
                log_prediction_panels(tensorboard, "search/predictions", model, val, epoch + 1, device)
            genotype = record_epoch(
                run, model, epoch, scores, scheduler.get_last_lr()[0], losses, tensorboard
            )
            shown = "  ".join(f"{k.replace('_', ' ')} {100 * v:.2f}%" for k, v in scores.items())
            echo(f"epoch {epoch + 1}/{config.epochs}: {shown.replace('miou', 'mIoU')}  {genotype.short()}")
            checkpoint()
    # Again at the end: a finished run resumed by a newer version gets files its decoding agrees with.
    _, genotype = write_architecture(run, model)
    return SearchResult(run.path, genotype)


def step_runners(
    model: SearchSpace,
    weight_opt: torch.optim.Optimizer,
    arch_opt: torch.optim.Optimizer,
    criterion: nn.Module,
    config: SearchConfig,
) -> tuple[Callable, Callable]:
    """The weight step and the architecture step as ``(images, masks) -> loss`` calls: plain, or replayed
    from CUDA graphs with ``execution.capture_steps`` (:class:`~autodeeplab.fast.capture.StepGraph`; the
    architecture step shares the weight step's memory pool, as they always run in that order)."""
    precision = config.execution.precision

    def w_step(images: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        return weight_step(model, images, masks, weight_opt, criterion, config.grad_clip, precision)

    def a_step(images: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        return arch_step(model, images, masks, arch_opt, criterion, precision)

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

    def __init__(self) -> None:
        self.steps: list[tuple[dict[str, int], torch.Tensor, torch.Tensor | None]] = []

    def add(self, where: dict[str, int], w_loss: torch.Tensor, a_loss: torch.Tensor | None) -> None:
        self.steps.append((where, w_loss, a_loss))

    def flush(self, position: SearchPosition, progress: Progress) -> None:
        """Read the losses in one transfer, check them in step order (a non-finite one names its own step)
        and add them to the epoch sums as per-step floats would be (the same float64 additions)."""
        if not self.steps:
            return
        values = torch.stack([x.double() for _, w, a in self.steps for x in (w, a) if x is not None]).tolist()
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


def _take(iterable: Iterable, count: int) -> Iterator:
    for i, item in enumerate(iterable):
        if i >= count:
            return
        yield item


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


def weight_step(
    model: SearchSpace,
    images: torch.Tensor,
    masks: torch.Tensor,
    optimizer: torch.optim.Optimizer,
    criterion: nn.Module,
    grad_clip: float,
    precision: Precision = "fp32",
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
            loss = criterion(model(images), masks)
        backward_and_step(loss, optimizer, precision, device_type, model.weight_parameters(), grad_clip)
    return loss.detach()


def arch_step(
    model: SearchSpace,
    images: torch.Tensor,
    masks: torch.Tensor,
    optimizer: torch.optim.Optimizer,
    criterion: nn.Module,
    precision: Precision = "fp32",
) -> torch.Tensor:
    """One Adam step on the architecture parameters with a trainB batch (first order); the weights do not
    move. The loss is the cross-entropy plus the space's :meth:`~SearchSpace.arch_loss_terms` (none for
    the paper's Auto-DeepLab); the value returned is that total (0-dim, on the device)."""
    _training_mode(model)
    device_type = images.device.type
    with frozen(model.weight_parameters()):
        optimizer.zero_grad(set_to_none=True)
        with autocast(precision, device_type):
            loss = criterion(model(images), masks)
            for term in model.arch_loss_terms().values():
                loss = loss + term
        backward_and_step(loss, optimizer, precision, device_type)
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


def steps_per_epoch(num_a: int, config: SearchConfig) -> int:
    steps = batches_per_epoch(num_a, config.batch_size)
    return min(steps, config.steps_per_epoch) if config.steps_per_epoch else steps
