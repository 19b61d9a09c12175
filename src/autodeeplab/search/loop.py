"""The bilevel architecture search (paper §4.2, §5.1): one readable loop with named helpers.

Each weight step (SGD on a trainA batch) is followed, once the warm-up is over, by an architecture
step (Adam on α and β with a trainB batch) — first-order DARTS. The two halves are a seeded random
split of the training set, written to ``split.json`` and reused on resume. After each epoch the
run directory gets ``arch_params.json``, a line of ``arch_history.jsonl``, the decoded
``genotype.json``, a line of ``metrics.jsonl`` and a checkpoint that resumes the run exactly.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

from autodeeplab import __version__
from autodeeplab.config.settings import dump_config_yaml
from autodeeplab.data.cityscapes import FULL_SIZE as CITYSCAPES_FULL_SIZE
from autodeeplab.data.splits import record_split
from autodeeplab.data.volume_checks import is_volume_dataset
from autodeeplab.errors import ConfigError
from autodeeplab.fast.execution import reference_switches
from autodeeplab.infer.predict import log_prediction_panels
from autodeeplab.ops.losses import make_loss
from autodeeplab.runs import distributed
from autodeeplab.runs.device import resolve_device
from autodeeplab.runs.follower import open_rank_run, rank0_first
from autodeeplab.runs.progress import Progress
from autodeeplab.runs.rundir import RunDir, maybe_tensorboard
from autodeeplab.runs.sampling import CyclePosition, CyclingLoader, batches_per_epoch, epoch_loader
from autodeeplab.runs.state import SYNC_EVERY, GracefulInterrupt, batch_norm_needs_two_values
from autodeeplab.runs.sync_bn import convert_sync_batch_norm
from autodeeplab.search.config import SearchConfig
from autodeeplab.search.data import build_search_data, validation_score
from autodeeplab.search.spaces import SpaceBuilder, space_builder
from autodeeplab.search.state import (
    PENDING_CHANGES,
    SearchPosition,
    load_or_make_split,
    load_resume_checkpoint,
    record_epoch,
    restore_checkpoint,
    restore_split,
    save_search_checkpoint,
    write_architecture,
)
from autodeeplab.search.steps import (  # noqa: F401  (the steps' public home is search.steps)
    PendingLosses,
    arch_step,
    frozen,
    make_optimizers,
    step_runners,
    weight_step,
)
from autodeeplab.space.contract import Architecture, check_search_space

STREAM_A, STREAM_B = 1, 2  # independent batch orders for trainA and trainB


@dataclass
class SearchResult:
    run_dir: Path
    genotype: Architecture
    """The decoded architecture (a :class:`~autodeeplab.space.autodeeplab.genotype.Genotype` for
    Auto-DeepLab)."""
    interrupted: bool = False


# -- the loop ---------------------------------------------------------------------------------------
def capture_hint(config: SearchConfig, device_type: str, world: int) -> str | None:
    """A note for an eager Auto-DeepLab search on a GPU that could replay its steps from CUDA graphs
    (``execution.capture_steps``, off by default), or None. Why: eager steps on a GPU are bound by the
    host's operator dispatch; on an H200 at the paper's setting the captured steps were 6.6x faster in fp32
    (benchmarks/README.md, "GPU")."""
    capturable = (
        device_type == "cuda"
        and world == 1  # not with several processes yet (check_distributed_search)
        and config.search_space == "autodeeplab"  # measured there only
        and not config.execution.capture_steps
        and config.execution.precision != "fp16"  # its loss scaler reads the device every step
        and config.budget.multiply_adds is None  # its term is not capturable yet
        and not config.execution.checkpoint_cells  # never run captured on a GPU
    )
    if not capturable:
        return None
    return (
        "note: on a GPU, --set execution.capture_steps=true replays each search step from a CUDA graph "
        "(same steps; 6.6x faster measured on an H200 at the paper's setting; benchmarks/README.md, GPU)"
    )


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
    ranks = distributed.setup(config.device)  # one process, or this rank of a torchrun launch
    if ranks.world > 1:
        check_distributed_search(config, ranks.world)
    build_space = build_space or space_builder(config)
    # rank 0 owns the run directory: it alone writes files
    run = open_rank_run(run_dir, resume, config.keep_checkpoints, ranks)
    if not ranks.is_main:
        quiet, echo = True, lambda s: None
    per_rank = ranks.world > 1 and not config.sync_bn
    single_sample_bn = batch_norm_needs_two_values(config.batch_size // ranks.world, per_rank)
    with run.kept_resumable("search", continue_with), run.locked(), single_sample_bn:
        return _search(config, run, resume, quiet, echo, build_space, ranks)


def check_distributed_search(config: SearchConfig, world: int) -> None:
    """What a distributed search cannot do yet, refused in one line before anything starts."""
    if config.batch_size % world:
        raise ConfigError(
            f"batch_size: {config.batch_size} (the global batch) is not divisible by the {world} processes"
        )
    if config.execution.capture_steps:
        raise ConfigError("execution.capture_steps: not with several processes yet (collectives in a graph)")
    if config.sync_bn:
        if config.search_space != "autodeeplab":
            raise ConfigError(
                f"sync_bn: not with search_space {config.search_space} (its supernet normalises with its own "
                "calls); drop it"
            )
        fast = [
            k for k, v in reference_switches().items() if getattr(config.execution, k) != v and v is False
        ]
        if fast:
            sets = " ".join(f"--set execution.{k}=false" for k in fast)
            raise ConfigError(
                "sync_bn: the fast path normalises with its own calls, which would bypass it; run the "
                f"reference path ({sets}) or drop sync_bn"
            )


def _search(
    config: SearchConfig,
    run: RunDir,
    resume: bool,
    quiet: bool,
    echo,
    build_space: SpaceBuilder,
    ranks: distributed.RankInfo,
) -> SearchResult:
    world, main = ranks.world, ranks.is_main
    # rank 0 reads the checkpoint first (and sets aside any corrupt one)
    loaded = rank0_first(
        lambda: load_resume_checkpoint(run, config, echo) if resume else None, ranks, "the checkpoint"
    )
    if loaded is not None and not main:
        loaded[0].pop(PENDING_CHANGES, None)  # rank 0 records the accepted changes in config.yaml
    device = distributed.rank_device(resolve_device(config.device), ranks)
    config.execution.check_device(device.type)  # the rest was validated with the settings
    train_a, train_b, val = build_search_data(config, quiet)
    if main:
        record_split(run.path, train_a)  # a split made by the reader: written, or checked on resume
    if config.data.dataset == "cityscapes" and tuple(train_a.image_size or ()) == CITYSCAPES_FULL_SIZE:
        echo(
            "note: searching on full-resolution Cityscapes; the paper crops from half-resolution images "
            "(make them once: autodeeplab data prepare --data-root ROOT --out HALF --scale 0.5)"
        )
    hint = None if resume else capture_hint(config, device.type, world)  # a resume keeps its settings
    if hint is not None:
        echo(hint)
    if loaded is None:
        split = load_or_make_split(run, len(train_a), config)
    else:
        split = restore_split(run, loaded[0].get("split"), loaded[1], len(train_a), config, echo)
    torch.manual_seed(config.seed)
    num_classes = train_a.num_classes
    model = build_space(config, num_classes, getattr(train_a, "in_channels", 3)).to(device)
    check_search_space(model)
    if world > 1 and config.sync_bn:  # the reference path calls the BN modules: make them global
        convert_sync_batch_norm(model, device.type)
    weight_opt, arch_opt, scheduler = make_optimizers(model, config)
    position = SearchPosition()
    if loaded is not None:
        optimizers = (weight_opt, arch_opt, scheduler)
        position = restore_checkpoint(run, loaded, model, optimizers, num_classes, config, echo)
    elif main:
        dump_config_yaml(
            config, run.path / "config.yaml", {"autodeeplab_version": __version__, "seed": config.seed}
        )
    distributed.agree([position.global_step], "the step resumed from (is the run directory shared?)", world)
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
        (ranks.rank, world),
    )
    steps = steps_per_epoch(len(split["train_a"]), config)
    echo(
        f"searching: {len(split['train_a'])} trainA / {len(split['train_b'])} trainB "
        f"{'volumes' if is_volume_dataset(train_a) else 'images'}, "
        f"{steps} steps x {config.epochs} epochs, device {device}, run dir {run.path}"
    )
    tensorboard = maybe_tensorboard(run.path, config.tensorboard and main, warn=echo)

    def checkpoint() -> None:
        save_search_checkpoint(
            run, model, weight_opt, arch_opt, scheduler, position, config, split, num_classes
        )

    w_graph, a_graph = step_runners(model, weight_opt, arch_opt, criterion, config, world)
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
                (ranks.rank, world),
            )
            pending = PendingLosses(world)
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
                stopping = stop.requested
                if len(pending.steps) >= SYNC_EVERY:
                    pending.flush(position, progress)
                    # every rank reads the same steps: they agree there whether one was asked to stop
                    stopping = distributed.any_rank(stop.requested, world)
                elif world > 1:
                    stopping = False  # a stop waits for the next read, where every rank sees it
                if config.checkpoint_every and position.global_step % config.checkpoint_every == 0:
                    pending.flush(position, progress)  # a checkpoint holds only checked steps
                    checkpoint()
                if stopping:
                    pending.flush(position, progress)
                    progress.close()
                    checkpoint()
                    echo(
                        f"interrupted: checkpoint saved; resume with `autodeeplab search --resume {run.path}`"
                    )
                    return SearchResult(run.path, model.decode(), interrupted=True)
            pending.flush(position, progress)
            progress.close()
            epoch_lr = scheduler.get_last_lr()[0]  # the rate this epoch trained with, recorded below
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
            # Every rank applied the same averaged updates; a rank that drifted stops the run here.
            distributed.check_identical(model.arch_parameters(), "the architecture weights", world)
            if main:
                genotype = record_epoch(run, model, epoch, scores, epoch_lr, losses, tensorboard)
            else:
                genotype = model.decode()
            shown = "  ".join(f"{k.replace('_', ' ')} {100 * v:.2f}%" for k, v in scores.items())
            echo(f"epoch {epoch + 1}/{config.epochs}: {shown.replace('miou', 'mIoU')}  {genotype.short()}")
            checkpoint()
    # Again at the end: a finished run resumed by a newer version gets files its decoding agrees with.
    genotype = write_architecture(run, model)[1] if main else model.decode()
    return SearchResult(run.path, genotype)


def _take(iterable: Iterable, count: int) -> Iterator:
    for i, item in enumerate(iterable):
        if i >= count:
            return
        yield item


def steps_per_epoch(num_a: int, config: SearchConfig) -> int:
    steps = batches_per_epoch(num_a, config.batch_size)
    return min(steps, config.steps_per_epoch) if config.steps_per_epoch else steps
