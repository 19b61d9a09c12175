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

from . import __version__
from .config import check_resume_changes, config_to_dict, dump_config_yaml, record_resume_changes
from .data import EvalTransform, TrainTransform, build_dataset, check_crop_size
from .decode import arch_params_to_dict, decode, save_arch_params
from .device import resolve_device
from .errors import CheckpointError, ConfigError, DataError
from .evaluate import evaluate
from .genotype import Genotype
from .precision import autocast, backward_and_step, load_scaler_states, scaler_states
from .predict import log_prediction_panels
from .progress import Progress
from .runs import (
    GracefulInterrupt,
    RunDir,
    capture_rng_state,
    check_finite,
    maybe_tensorboard,
    restore_rng_state,
)
from .sampling import CyclePosition, CyclingLoader, batches_per_epoch, epoch_loader, split_halves
from .search_config import SearchConfig
from .search_space import SearchNetwork

STREAM_A, STREAM_B = 1, 2  # independent batch orders for trainA and trainB
CHECKPOINT_FORMAT = "autodeeplab-search-1"


RESUMABLE_KEYS = frozenset(
    {"epochs", "checkpoint_every", "keep_checkpoints", "device", "data.root", "data.num_workers"}
)
"""Settings that ``--resume`` may change (``--set epochs=60`` extends a search; the data may move). Any
other change would not fit the saved weights or would break the exact resume, and is refused."""


@dataclass
class SearchPosition:
    """Where the loop stands; saved in every checkpoint so that a resume continues exactly here."""

    epoch: int = 0
    batch: int = 0  # weight steps done in this epoch
    global_step: int = 0
    b_cycle: int = 0
    b_batch: int = 0
    # The epoch's running loss sums, for its mean in metrics.jsonl (exact across a mid-epoch resume).
    w_loss_sum: float = 0.0
    a_loss_sum: float = 0.0
    a_steps: int = 0


@dataclass
class SearchResult:
    run_dir: Path
    genotype: Genotype
    interrupted: bool = False


# -- the loop ---------------------------------------------------------------------------------------
def run_search(
    config: SearchConfig,
    run_dir: str | Path,
    resume: bool = False,
    quiet: bool = False,
    echo: Callable[[str], None] = print,
) -> SearchResult:
    """Search an architecture with ``config``, writing everything into ``run_dir``.

    On ``resume`` the newest good checkpoint is read first and ``config`` compared with the one it was
    written with: only :data:`RESUMABLE_KEYS` may differ (recorded in ``config.yaml``). A new run that
    stops on a user error before its first checkpoint removes its files (``RunDir.removed_if_unstarted``).
    """
    config.validate()
    run = RunDir(run_dir, resume=resume, keep_checkpoints=config.keep_checkpoints)
    with run.removed_if_unstarted():
        return _search(config, run, resume, quiet, echo)


def _search(config: SearchConfig, run: RunDir, resume: bool, quiet: bool, echo) -> SearchResult:
    loaded = load_resume_checkpoint(run, config, echo) if resume else None
    device = resolve_device(config.device)
    train_a, train_b, val = build_search_data(config)
    if loaded is None:
        split = load_or_make_split(run, len(train_a), config)
    else:
        split = restore_split(run, loaded[0].get("split"), loaded[1], len(train_a), config, echo)
    torch.manual_seed(config.seed)
    config.execution.validate(device.type)
    num_classes = train_a.num_classes
    model = SearchNetwork(config.space, num_classes, execution=config.execution).to(device)
    weight_opt, arch_opt, scheduler = make_optimizers(model, config)
    position = SearchPosition()
    if loaded is not None:
        optimizers = (weight_opt, arch_opt, scheduler)
        position = restore_checkpoint(run, loaded, model, optimizers, num_classes, config, echo)
    else:
        dump_config_yaml(
            config, run.path / "config.yaml", {"autodeeplab_version": __version__, "seed": config.seed}
        )
    criterion = nn.CrossEntropyLoss(ignore_index=train_a.ignore_index)
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
        f"searching: {len(split['train_a'])} trainA / {len(split['train_b'])} trainB images, "
        f"{steps} steps x {config.epochs} epochs, device {device}, run dir {run.path}"
    )
    tensorboard = maybe_tensorboard(run.path, config.tensorboard, warn=echo)

    def checkpoint() -> None:
        save_checkpoint(run, model, weight_opt, arch_opt, scheduler, position, config, split, num_classes)

    with GracefulInterrupt() as stop:
        while position.epoch < config.epochs:
            epoch = position.epoch
            searching_arch = epoch >= config.arch_start_epoch
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
            for images, masks in _take(batches, steps - position.batch):
                where = {"epoch": epoch + 1, "step": position.batch + 1}
                w_loss = weight_step(
                    model, images.to(device), masks.to(device), weight_opt, criterion, config.grad_clip
                )
                check_finite(w_loss, "weight-step loss", **where)
                seen, shown = images.shape[0], {"loss": w_loss, "lr": scheduler.get_last_lr()[0]}
                position.w_loss_sum += w_loss
                if searching_arch:
                    b_images, b_masks = b_stream.next()
                    a_loss = arch_step(model, b_images.to(device), b_masks.to(device), arch_opt, criterion)
                    check_finite(a_loss, "architecture-step loss", **where)
                    seen, shown["arch_loss"] = seen + b_images.shape[0], a_loss
                    position.a_loss_sum += a_loss
                    position.a_steps += 1
                position.batch += 1
                position.global_step += 1
                position.b_cycle, position.b_batch = b_stream.position.cycle, b_stream.position.batch
                progress.update(1, images=seen, **shown)
                if config.checkpoint_every and position.global_step % config.checkpoint_every == 0:
                    checkpoint()
                if stop.requested:
                    progress.close()
                    checkpoint()
                    echo(
                        f"interrupted: checkpoint saved; resume with `autodeeplab search --resume {run.path}`"
                    )
                    return SearchResult(run.path, current_genotype(model), interrupted=True)
            progress.close()
            scheduler.step()
            losses = {"train_loss": position.w_loss_sum / position.batch if position.batch else math.nan}
            if position.a_steps:
                losses["arch_loss"] = position.a_loss_sum / position.a_steps
            position = SearchPosition(
                epoch + 1, 0, position.global_step, position.b_cycle, position.b_batch
            )  # the sums start again
            val_miou = validate(model, val, config, device)
            if tensorboard is not None:
                log_prediction_panels(tensorboard, "search/predictions", model, val, epoch + 1, device)
            genotype = record_epoch(
                run, model, epoch, val_miou, scheduler.get_last_lr()[0], losses, tensorboard
            )
            echo(f"epoch {epoch + 1}/{config.epochs}: val mIoU {100 * val_miou:.2f}%  {genotype.short()}")
            checkpoint()
    genotype = current_genotype(model)
    genotype.save(run.path / "genotype.json")
    return SearchResult(run.path, genotype)


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


def weight_step(
    model: SearchNetwork,
    images: torch.Tensor,
    masks: torch.Tensor,
    optimizer: torch.optim.Optimizer,
    criterion: nn.Module,
    grad_clip: float,
) -> float:
    """One SGD step on the network weights with a trainA batch; α and β do not move.

    Runs in ``model.execution.precision`` (autocast; fp16 with a gradient scaler).
    """
    model.train()
    precision, device_type = model.execution.precision, images.device.type
    with frozen(model.arch_parameters()):
        optimizer.zero_grad(set_to_none=True)
        with autocast(precision, device_type):
            loss = criterion(model(images), masks)
        backward_and_step(loss, optimizer, precision, device_type, model.weight_parameters(), grad_clip)
    return float(loss.detach())


def arch_step(
    model: SearchNetwork,
    images: torch.Tensor,
    masks: torch.Tensor,
    optimizer: torch.optim.Optimizer,
    criterion: nn.Module,
) -> float:
    """One Adam step on α and β with a trainB batch (first order); the weights do not move."""
    model.train()
    precision, device_type = model.execution.precision, images.device.type
    with frozen(model.weight_parameters()):
        optimizer.zero_grad(set_to_none=True)
        with autocast(precision, device_type):
            loss = criterion(model(images), masks)
        backward_and_step(loss, optimizer, precision, device_type)
    return float(loss.detach())


def make_optimizers(
    model: SearchNetwork, config: SearchConfig
) -> tuple[torch.optim.Optimizer, torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
    weight_opt = torch.optim.SGD(
        model.weight_parameters(), lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay
    )
    arch_opt = torch.optim.Adam(
        model.arch_parameters(),
        lr=config.arch_lr,
        betas=config.arch_betas,
        weight_decay=config.arch_weight_decay,
    )
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(
        weight_opt, T_max=config.epochs, eta_min=config.lr_min
    )
    return weight_opt, arch_opt, scheduler


# -- data -------------------------------------------------------------------------------------------
def build_search_data(config: SearchConfig):
    """trainA and trainB views (each with its own epoch counter for augmentation) and the val split."""
    d = config.data
    train_transform = TrainTransform(d.crop_size, scale_range=d.scale_range, flip=d.flip)

    def open_split(split: str, transform, synthetic_samples: int):
        options = {"seed": config.seed}
        if d.dataset == "synthetic":
            options.update(num_samples=synthetic_samples, size=d.synthetic_size)
        return build_dataset(d.dataset, d.root, split, transform=transform, **options)

    train_a = open_split(d.train_split, train_transform, d.synthetic_train_samples)
    check_crop_size(d.crop_size, train_a.image_size, d.scale_range[1])
    train_b = open_split(d.train_split, train_transform, d.synthetic_train_samples)
    val = open_split(d.val_split, EvalTransform(), d.synthetic_val_samples)
    if len(train_a) < 2 * config.batch_size:
        raise DataError(
            f"{d.dataset} {d.train_split}: {len(train_a)} images cannot fill one batch of "
            f"{config.batch_size} in each of trainA and trainB"
        )
    return train_a, train_b, val


def load_or_make_split(run: RunDir, num_samples: int, config: SearchConfig) -> dict:
    """The trainA/trainB split: read from ``split.json`` when resuming, else drawn and written."""
    path = run.path / "split.json"
    if path.exists():
        split = run.read_json("split.json")
        if max(split["train_a"] + split["train_b"]) >= num_samples:
            raise DataError(f"{path}: the split names images beyond the dataset's {num_samples}")
        return split
    train_a, train_b = split_halves(num_samples, config.seed)
    split = {
        "seed": config.seed,
        "dataset": config.data.dataset,
        "split": config.data.train_split,
        "train_a": train_a,
        "train_b": train_b,
    }
    run.write_json("split.json", split)
    return split


def restore_split(
    run: RunDir, saved: dict | None, checkpoint: Path, num_samples: int, config: SearchConfig, echo
) -> dict:
    """The trainA/trainB split of a resumed run: the checkpoint's, checked against ``split.json``.

    ``split.json`` missing: written again from the checkpoint (the checkpoint is the authority, so nothing
    is guessed). ``split.json`` different from the checkpoint's (edited by hand): refused, as the weights
    were trained on the other split. A checkpoint of an older version without a split uses ``split.json``.
    """
    path = run.path / "split.json"
    if saved is None:
        if not path.exists():
            raise CheckpointError(f"{path}: missing, and {checkpoint.name} holds no split to restore it from")
        return load_or_make_split(run, num_samples, config)
    saved = {key: list(value) if isinstance(value, list) else value for key, value in saved.items()}
    if not path.exists():
        run.write_json("split.json", saved)
        echo(f"split.json was missing: restored it from {checkpoint.name}")
    else:
        on_disk = run.read_json("split.json")
        halves = ("train_a", "train_b")
        if not isinstance(on_disk, dict) or any(on_disk.get(k) != saved[k] for k in halves):
            raise CheckpointError(
                f"{path}: differs from the trainA/trainB split saved in {checkpoint.name}; put the "
                "original back or delete split.json to have it restored from the checkpoint"
            )
    if max(saved["train_a"] + saved["train_b"]) >= num_samples:
        raise DataError(f"{path}: the split names images beyond the dataset's {num_samples}")
    return saved


def steps_per_epoch(num_a: int, config: SearchConfig) -> int:
    steps = batches_per_epoch(num_a, config.batch_size)
    return min(steps, config.steps_per_epoch) if config.steps_per_epoch else steps


def validate(model: SearchNetwork, val, config: SearchConfig, device: torch.device) -> float:
    result = evaluate(
        model,
        val,
        val.num_classes,
        val.class_names,
        val.ignore_index,
        device=device,
        max_images=config.data.max_val_images,
    )
    return float(result.metrics.miou)


# -- records and checkpoints ------------------------------------------------------------------------
@torch.no_grad()
def current_genotype(model: SearchNetwork) -> Genotype:
    alpha, beta = model.alpha_weights().cpu().numpy(), model.beta_weights().cpu().numpy()
    return decode(alpha, beta, model.config.num_blocks)


@torch.no_grad()
def record_epoch(
    run: RunDir,
    model: SearchNetwork,
    epoch: int,
    val_miou: float,
    lr: float,
    losses: dict[str, float],
    tensorboard=None,
) -> Genotype:
    """Write the epoch's architecture files and metrics line; returns the decoded genotype.

    ``losses``: the epoch means, ``train_loss`` of the weight steps and ``arch_loss`` of the architecture
    steps (absent in the warm-up epochs, which run none).
    """
    alpha, beta = model.alpha_weights().cpu().numpy(), model.beta_weights().cpu().numpy()
    save_arch_params(run.path / "arch_params.json", alpha, beta)
    run.append_jsonl("arch_history.jsonl", {"epoch": epoch + 1, **arch_params_to_dict(alpha, beta)})
    genotype = decode(alpha, beta, model.config.num_blocks)
    genotype.save(run.path / "genotype.json")
    record = {"phase": "search", "epoch": epoch + 1, **losses, "val_miou": val_miou, "lr": lr}
    run.append_jsonl("metrics.jsonl", {**record, "genotype": genotype.short()})
    if tensorboard is not None:
        for key in ("train_loss", "arch_loss", "val_miou", "lr"):
            if key in record:
                tensorboard.add_scalar(f"search/{key}", record[key], epoch + 1)
        tensorboard.add_histogram("search/alpha_weights", alpha, epoch + 1)
        tensorboard.add_image("search/alpha", alpha[None] / alpha.max(), epoch + 1)
        tensorboard.add_image("search/beta", beta.transpose(2, 1, 0) / max(beta.max(), 1e-12), epoch + 1)
        tensorboard.flush()
    return genotype


def save_checkpoint(
    run,
    model,
    weight_opt,
    arch_opt,
    scheduler,
    position: SearchPosition,
    config,
    split: dict,
    num_classes: int,
) -> None:
    state = {
        "format": CHECKPOINT_FORMAT,
        "autodeeplab_version": __version__,
        "config": config_to_dict(config),
        "num_classes": num_classes,
        "split": split,  # the trainA/trainB halves the weights were trained on (split.json is a copy)
        "model": model.state_dict(),
        "weight_optimizer": weight_opt.state_dict(),
        "arch_optimizer": arch_opt.state_dict(),
        "scheduler": scheduler.state_dict(),
        "position": vars(position).copy(),
        "rng": capture_rng_state(),
        "grad_scalers": scaler_states({"weight": weight_opt, "arch": arch_opt}),  # fp16 only
    }
    run.checkpoints.save(state, f"epoch{position.epoch:04d}-step{position.global_step:08d}")


def load_resume_checkpoint(run: RunDir, config: SearchConfig, echo) -> tuple[dict, Path]:
    """The newest good search checkpoint, once ``config`` is known to fit it (before any data is read).

    Allowed changes (:data:`RESUMABLE_KEYS`) are written to ``config.yaml`` under ``run_info.resumed_with``.
    """
    loaded = run.checkpoints.load_latest(warn=echo)
    if loaded is None:
        raise ConfigError(f"{run.path}: nothing to resume (no checkpoint in {run.path / 'checkpoints'})")
    state, path = loaded
    if state.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path}: not a search checkpoint (format {state.get('format')!r})")
    changes = check_resume_changes(state.get("config", {}), config, RESUMABLE_KEYS, f"--resume {run.path}")
    position = SearchPosition(**state["position"])
    if config.epochs < position.epoch + (1 if position.batch else 0):
        raise ConfigError(
            f"--resume {run.path}: epochs {config.epochs} is less than the {position.epoch} epochs done"
        )
    if changes:
        record_resume_changes(config, run.path / "config.yaml", changes, path.name)
        echo("resuming with " + ", ".join(f"{key} {old!r} -> {new!r}" for key, old, new in changes))
    return state, path


def restore_checkpoint(
    run, loaded: tuple[dict, Path], model, optimizers, num_classes: int, config: SearchConfig, echo
) -> SearchPosition:
    """Put the checkpoint's weights, ``optimizers`` (weight, arch, scheduler) and RNG states back; returns
    the position. Raises :class:`CheckpointError` (one line) when the checkpoint does not fit."""
    state, path = loaded
    weight_opt, arch_opt, scheduler = optimizers
    saved_classes = state.get("num_classes", num_classes)
    if saved_classes != num_classes:
        raise CheckpointError(
            f"{path}: the checkpoint was searched on {saved_classes} classes but {config.data.dataset} "
            f"{config.data.train_split} has {num_classes}"
        )
    try:
        model.load_state_dict(state["model"])
        weight_opt.load_state_dict(state["weight_optimizer"])
        arch_opt.load_state_dict(state["arch_optimizer"])
        scheduler.load_state_dict(state["scheduler"])
    except (RuntimeError, ValueError, KeyError) as exc:  # shapes, missing keys, parameter groups
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:160]
        raise CheckpointError(f"{path}: does not fit this search's network ({first})") from None
    if scheduler.T_max != config.epochs:
        _stretch_schedule(scheduler, config.epochs)
    restore_rng_state(state["rng"])
    device_type = next(model.parameters()).device.type
    load_scaler_states({"weight": weight_opt, "arch": arch_opt}, state.get("grad_scalers", {}), device_type)
    position = SearchPosition(**state["position"])
    # Epoch records written after this checkpoint would otherwise appear twice.
    for name in ("metrics.jsonl", "arch_history.jsonl"):
        run.filter_jsonl(name, lambda record: record.get("epoch", 0) <= position.epoch)
    echo(f"resuming from {path.name}: epoch {position.epoch + 1}, step {position.batch}")
    return position


def _stretch_schedule(scheduler: torch.optim.lr_scheduler.CosineAnnealingLR, epochs: int) -> None:
    """A resume that changed ``epochs``: continue the cosine schedule as if planned for ``epochs``.

    The saved schedule is for the old length; the learning rate is set to the closed form of the new one
    at the current epoch, from where the scheduler's own recursive steps follow the new curve.
    """
    scheduler.T_max = epochs
    t, low = scheduler.last_epoch, scheduler.eta_min
    for group, base in zip(scheduler.optimizer.param_groups, scheduler.base_lrs, strict=True):
        group["lr"] = low + (base - low) * (1 + math.cos(math.pi * t / epochs)) / 2
    scheduler._last_lr = [group["lr"] for group in scheduler.optimizer.param_groups]
