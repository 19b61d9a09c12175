"""Retraining the found network from scratch (paper §5.2, Table 3).

The loop: SGD with momentum, a poly learning-rate schedule ``lr · (1 - step/iterations)^power`` set every
step, weight decay on convolution weights only (DeepLab's slim regulariser; BN and biases are not
decayed), BN trained, random scale + crop + flip from the data layer, and Scheduled Drop Path through
``net.set_drop_path_progress(step / iterations)``. The batch order is a pure function of (seed, epoch)
(:mod:`autodeeplab.runs.sampling`), so a resumed run sees exactly the batches it would have seen.

A run directory holds::

    config.yaml           the resolved TrainConfig (load it again with --config)
    genotype.json         the architecture trained (dints_arch.json for a DiNTS one)
    metrics.jsonl         one line per logged step (loss, lr) and per evaluation (mIoU)
    checkpoints/*.pt      training state for --resume (weights, optimiser, step, RNG), rotated
    model.pt              the trained model: everything eval / predict / export need (see below)

The trained-model file is described in :mod:`autodeeplab.nets.model_file`; checkpoints and ``model.pt`` are
written, and read back for ``--resume``, by :mod:`autodeeplab.train.state`.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from autodeeplab import __version__
from autodeeplab.config.settings import dump_config_yaml
from autodeeplab.data.checks import files_to_read, refuse_broken_files, refuse_hidden_class
from autodeeplab.data.splits import record_split
from autodeeplab.data.volume_checks import is_volume_dataset
from autodeeplab.data.volumes import VOLUME_DATASETS
from autodeeplab.errors import DataError
from autodeeplab.infer.predict import log_prediction_panels
from autodeeplab.nets.dints import DintsNet, dints_shape
from autodeeplab.nets.model_file import MODEL_FILE, TrainedInfo, TrainedNet
from autodeeplab.nets.network import AutoDeepLabNet
from autodeeplab.ops.losses import make_loss
from autodeeplab.optim import sgd
from autodeeplab.runs import distributed
from autodeeplab.runs.device import preferred_memory_format, resolve_device
from autodeeplab.runs.follower import open_rank_run, rank0_first
from autodeeplab.runs.progress import READ_BAR_DELAY_S, Progress
from autodeeplab.runs.resume import PENDING_CHANGES
from autodeeplab.runs.rundir import RunDir, maybe_tensorboard
from autodeeplab.runs.sampling import batches_per_epoch, epoch_loader
from autodeeplab.runs.state import SYNC_EVERY, GracefulInterrupt, batch_norm_needs_two_values, read_losses
from autodeeplab.runs.sync_bn import broadcast_buffers
from autodeeplab.space.architectures import AnyArchitecture
from autodeeplab.space.dints.arch import DintsArch
from autodeeplab.space.dints.config import check_sample_size
from autodeeplab.train.config import TrainConfig
from autodeeplab.train.evaluation import evaluate_during_training
from autodeeplab.train.state import load_training_state, restore_training_state, save_training_state
from autodeeplab.train.steps import accumulated_step, distributed_forward, for_ranks, spread

TRAIN_STREAM = 0  # the sampling stream id of the training batches


# -- the loop -------------------------------------------------------------------------------------------
@dataclass
class TrainResult:
    run_dir: Path
    model_path: Path
    step: int
    metrics: dict[str, Any] | None
    seconds: float
    interrupted: bool = False


def poly_lr(base_lr: float, step: int, iterations: int, power: float) -> float:
    """The poly schedule: ``base_lr · (1 - step / iterations) ^ power`` (0 at the end)."""
    return base_lr * max(0.0, 1.0 - step / iterations) ** power


def make_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.SGD:
    """SGD with momentum; weight decay on convolution kernels (tensors with >1 dims) only.

    Fused where torch has it (:mod:`autodeeplab.optim`).
    """
    decay = [p for p in model.parameters() if p.dim() > 1]
    no_decay = [p for p in model.parameters() if p.dim() <= 1]
    groups = [
        {"params": decay, "weight_decay": config.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    return sgd(groups, lr=config.lr, momentum=config.momentum)


def train_dataset_options(config: TrainConfig) -> dict[str, Any]:
    """``build_dataset`` options shared by the training and evaluation splits (recorded in ``model.pt``)."""
    d = config.data
    if d.dataset == "synthetic":
        return {"size": list(d.synthetic_size), "seed": config.seed}
    if d.dataset == "folder":  # the held-out split of a plain folder is remade from these by eval
        return {"split_fractions": list(d.split_fractions), "split_seed": d.split_seed}
    if d.dataset in VOLUME_DATASETS:
        return d.volumes.dataset_options(d.split_fractions, d.split_seed)
    return {}


def build_train_data(config: TrainConfig, quiet: bool = False) -> tuple[Any, Any | None]:
    """The augmented training split and the evaluation split (or None); their files read once first where
    the run would meet them late (:func:`~autodeeplab.data.checks.refuse_broken_files`; a bar unless
    ``quiet``)."""
    from autodeeplab.data.registry import build_dataset
    from autodeeplab.data.transforms import EvalTransform, TrainTransform, check_crop_size
    from autodeeplab.data.volume_transforms import PatchTransform

    d = config.data
    synthetic, volumes = d.dataset == "synthetic", d.dataset in VOLUME_DATASETS
    options = train_dataset_options(config)
    n_train = {"num_samples": d.synthetic_train_samples} if synthetic else {}
    if volumes:
        transform = PatchTransform(d.volumes.patch_size, d.volumes.foreground_prob, flip=d.flip)
    else:
        transform = TrainTransform(d.crop_size, scale_range=d.scale_range, flip=d.flip, jitter=d.jitter)
    train = build_dataset(
        d.dataset, d.root, d.train_split, transform=transform, **{"seed": config.seed, **options, **n_train}
    )
    # model.num_classes, in_channels and spatial_dims fit the data: first, since a 3D preset on images
    # would otherwise be told about its (unused) crop size
    network_config(config, train)
    if not volumes:
        check_crop_size(d.crop_size, train.image_size, d.scale_range[1])
        refuse_hidden_class(train)  # 0/255 masks read with ignore 255 would lose their foreground
    if volumes:  # every pair read once now, not first met at step N
        with Progress(*files_to_read(train), quiet=quiet, delay_s=READ_BAR_DELAY_S) as bar:
            refuse_broken_files(train, None, bar.update)
    if batches_per_epoch(len(train), config.batch_size) == 0:
        raise DataError(
            f"{d.dataset} {d.train_split}: {len(train)} images cannot fill one batch of {config.batch_size}"
        )
    if d.eval_split is None:
        return train, None
    n_eval = {"num_samples": d.synthetic_eval_samples} if synthetic else {}
    val = build_dataset(
        d.dataset, d.root, d.eval_split, transform=None if volumes else EvalTransform(), **options, **n_eval
    )
    # volumes: every pair; images: those the first evaluation will read, now rather than after the steps
    # before it
    with Progress(*files_to_read(val, d.eval_max_images), quiet=quiet, delay_s=READ_BAR_DELAY_S) as bar:
        refuse_broken_files(val, d.eval_max_images, bar.update)
    return train, val


def network_config(config: TrainConfig, data: Any) -> Any:
    """``config.model`` completed for ``data`` (its classes, channels and dimensions)."""
    where = f"{config.data.dataset} {data.split}"
    dims = getattr(data, "spatial_dims", 2)
    channels = getattr(data, "in_channels", 3)
    return config.network_config(data.num_classes, where, in_channels=channels, spatial_dims=dims)


def build_model(
    genotype: AnyArchitecture,
    config: TrainConfig,
    num_classes: int,
    in_channels: int = 3,
    spatial_dims: int = 2,
) -> TrainedNet:
    """The network of ``config.model`` for data of ``num_classes`` classes and ``in_channels`` channels
    (images: 3, 2D; volumes: their modalities, 3D), initialised from ``config.seed``; a DiNTS architecture's
    with ``config.dints``'s widths and norm."""
    torch.manual_seed(config.seed)
    settings = config.network_config(num_classes, in_channels=in_channels, spatial_dims=spatial_dims)
    if isinstance(genotype, DintsArch):
        check_sample_size(genotype.depths, spatial_dims, config.data)
        d = config.dints
        shape = dints_shape(genotype, d.channels, d.norm, spatial_dims, in_channels, num_classes)
        return DintsNet(genotype, shape)
    return AutoDeepLabNet(genotype, settings)


def training_batches(
    train: Any, config: TrainConfig, step: int, shard: tuple[int, int] = (0, 1)
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Endless ``(images [B, 3, h, w], masks [B, h, w])`` from global step ``step`` on, epoch after epoch;
    ``shard`` ``(rank, world)``: this rank's ``B = batch_size / world`` samples of each global batch."""
    per_epoch = batches_per_epoch(len(train), config.batch_size)
    epoch, offset = divmod(step, per_epoch)
    indices = list(range(len(train)))
    workers = config.data.num_workers
    while True:
        loader = epoch_loader(
            train, indices, config.batch_size, config.seed, TRAIN_STREAM, epoch, offset, workers, shard
        )
        # Starting a DataLoader iterator draws a seed from torch's global RNG, which drop path also uses;
        # a resumed run starts one more iterator than an uninterrupted one, so keep that draw off the stream.
        with torch.random.fork_rng(devices=[]):
            batches = iter(loader)
        yield from batches
        epoch, offset = epoch + 1, 0


def run_training(
    config: TrainConfig,
    genotype: AnyArchitecture,
    run_dir: str | os.PathLike[str],
    resume: bool = False,
    quiet: bool = False,
    echo: Callable[[str], None] | None = None,
    continue_with: str | None = None,
) -> TrainResult:
    """Train ``genotype`` (a :class:`Genotype` or a DiNTS architecture) from scratch with ``config``,
    writing everything into ``run_dir``.

    Shows a progress bar (loss, lr, images/s) unless ``quiet``; messages (start, evaluations, interrupt) go
    to ``echo``, by default printed above the bar. ``continue_with``: the command line that continues an
    interrupted or failed run when it is part of a larger one (default: ``train --resume``, or the same
    command for a run that stopped before its first checkpoint).
    """
    config.validate()  # settings changed after they were built fail here, before anything is written
    ranks = distributed.setup(config.device)  # one process, or this rank of a torchrun launch
    micro = config.micro_batch(ranks.world)  # a global batch that does not split fails here
    run = open_rank_run(run_dir, resume, config.keep_checkpoints, ranks)  # rank 0 alone writes files
    if not ranks.is_main:
        quiet, echo = True, lambda s: None
    single_sample_bn = batch_norm_needs_two_values(micro, ranks.world > 1 and not config.sync_bn)
    with run.kept_resumable("train", continue_with), run.locked(), single_sample_bn:
        return _train(config, genotype, run, resume, quiet, echo, ranks)


def _train(
    config: TrainConfig,
    genotype: AnyArchitecture,
    run: RunDir,
    resume: bool,
    quiet: bool,
    echo,
    ranks: distributed.RankInfo,
) -> TrainResult:
    world, main = ranks.world, ranks.is_main

    # The checkpoint first: a resume with settings that do not fit it stops before any data is read.
    # Rank 0 reads it first (and sets aside a corrupt one); the others then read the same file.
    def read() -> tuple[dict[str, Any], Path] | None:
        return load_training_state(run, config, echo or print) if resume else None

    loaded = rank0_first(read, ranks, "the checkpoint")
    if loaded is not None and not main:
        loaded[0].pop(PENDING_CHANGES, None)  # rank 0 records the accepted changes in config.yaml
    device = distributed.rank_device(resolve_device(config.device), ranks)
    train, val = build_train_data(config, quiet)
    if main:
        record_split(run.path, train)  # a split made by the reader: written, or checked on resume
    dims, channels = getattr(train, "spatial_dims", 2), getattr(train, "in_channels", 3)
    layout = preferred_memory_format(device, dims)
    model = build_model(genotype, config, train.num_classes, channels, dims).to(device, memory_format=layout)
    model = for_ranks(model, ranks, config.sync_bn, device)  # global batch norms with sync_bn
    optimizer = make_optimizer(model, config)
    info = TrainedInfo(
        config.data.dataset,
        list(train.class_names),
        [list(c) for c in train.palette],
        train.ignore_index,
        iterations=config.iterations,
        dataset_options=train_dataset_options(config),
        data_root=str(Path(config.data.root).resolve()) if config.data.root else None,
        patch_size=list(config.data.volumes.patch_size) if is_volume_dataset(train) else None,
        window_overlap=config.data.volumes.window_overlap if is_volume_dataset(train) else None,
    )
    if loaded is not None:
        info.step, info.metrics = restore_training_state(
            run, loaded, model, optimizer, info, config, echo or print
        )
    distributed.agree([info.step], "the step resumed from (is the run directory shared?)", world)
    forward = distributed_forward(model, ranks, device)  # DDP over the ranks, or the model itself
    # The bar starts at the resumed step; its rates and ETA count only this process's steps.
    bar = Progress(config.iterations, "training", quiet=quiet, start=info.step)
    say = echo or (print if quiet else bar.log)  # quiet hides the bar, not the messages
    if loaded is not None:
        say(f"resuming from {loaded[1].name}: step {info.step}")
    elif main:
        extra = {"autodeeplab_version": __version__, "seed": config.seed}
        dump_config_yaml(config, run.file("config.yaml"), extra)
        genotype.save(run.file(genotype.FILE_NAME))
    criterion = make_loss(config.loss_name(), train.ignore_index)
    millions = sum(p.numel() for p in model.parameters()) / 1e6
    say(
        f"training {genotype.short()}: {len(train)} {config.data.dataset} "
        f"{'volumes' if is_volume_dataset(train) else 'images'}, "
        f"{config.iterations} steps of {config.batch_size}{spread(config, world)}, {millions:.2f}M "
        f"parameters, device {device}, run dir {run.path}"
    )
    tensorboard = maybe_tensorboard(run.path, config.tensorboard, warn=say) if main else None
    base_lr = config.base_lr()
    if base_lr != config.lr:
        say(
            f"lr {config.lr} for a batch of {config.lr_reference_batch} scaled to {base_lr:.6g} "
            f"({config.lr_scaling}) for the batch of {config.batch_size}"
        )

    start, losses = time.perf_counter(), []
    pending: list[tuple[int, torch.Tensor]] = []  # (step, loss) not read back yet
    model.train()
    stopping = False  # a stop every rank has seen (one process: at once; several: at the next read)
    saved_step = -1  # a stop right after a periodic save does not write the same step again
    with GracefulInterrupt() as stop, bar:
        for images, masks in training_batches(train, config, info.step, (ranks.rank, world)):
            if info.step >= config.iterations or stopping or (world == 1 and stop.requested):
                break
            lr = poly_lr(base_lr, info.step, config.iterations, config.lr_power)
            for group in optimizer.param_groups:
                group["lr"] = lr
            model.set_drop_path_progress(info.step / config.iterations)
            if world > 1:
                distributed.seed_rank_step(config.seed, info.step, ranks.rank)  # per-rank dropout masks
            optimizer.zero_grad(set_to_none=True)
            loss = accumulated_step(
                forward, criterion, images, masks, config.accumulate_steps, device, layout, world
            )
            optimizer.step()
            info.step += 1
            step, done = info.step, info.step == config.iterations
            pending.append((step, loss.detach()))
            bar.update(images=images.shape[0] * world, lr=lr)
            evaluate = val is not None and (done or (config.eval_every and step % config.eval_every == 0))
            save = done or (config.checkpoint_every and step % config.checkpoint_every == 0)
            logged = step % config.log_every == 0 or done
            if logged or evaluate or save or len(pending) >= SYNC_EVERY or (world == 1 and stop.requested):
                # One read for the steps since the last (the loop's only wait for the device). A
                # non-finite loss stops the run with its own step before anything is written: the
                # last checkpoint stays good. Every rank reads at the same steps, so they agree there
                # whether one was asked to stop (SIGTERM reaches the ranks at different moments).
                losses.extend(read_losses(pending, "training loss", world))
                bar.update(0, loss=losses[-1])
                stopping = distributed.any_rank(stop.requested, world)
            if (evaluate or save) and world > 1:
                broadcast_buffers(model, world)  # rank 0's running statistics: the ones model.pt holds
            if logged:
                mean, losses = sum(losses) / len(losses), []
                elapsed = round(time.perf_counter() - start, 1)
                run.append_jsonl("metrics.jsonl", {"step": step, "loss": mean, "lr": lr, "seconds": elapsed})
                if tensorboard is not None:
                    tensorboard.add_scalar("train/loss", mean, step)
                    tensorboard.add_scalar("train/lr", lr, step)
            if evaluate:
                info.metrics = evaluate_during_training(model, val, config, run, step, device, say, ranks)
                if tensorboard is not None:
                    score = "mean_dice" if is_volume_dataset(val) else "miou"
                    tensorboard.add_scalar(
                        f"train/{config.data.eval_split}_{score}", info.metrics[score], step
                    )
                    if not is_volume_dataset(val):
                        log_prediction_panels(tensorboard, "train/predictions", model, val, step, device)
                    tensorboard.flush()
            if save and main:
                save_training_state(run, model, optimizer, info, config)
            saved_step = step if save else saved_step
    stopping = stopping or (world == 1 and stop.requested)  # one process may stop between reads
    interrupted = stopping and info.step < config.iterations
    if interrupted:
        read_losses(pending, "training loss", world)  # the checkpoint holds only checked steps
        broadcast_buffers(model, world)
        if main and info.step != saved_step:
            save_training_state(run, model, optimizer, info, config)
        say(f"interrupted: checkpoint saved; resume with `autodeeplab train --resume {run.path}`")
    seconds = time.perf_counter() - start
    return TrainResult(run.path, run.file(MODEL_FILE), info.step, info.metrics, seconds, interrupted)
