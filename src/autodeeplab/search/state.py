"""The search's state on disk: the trainA/trainB split, per-epoch records and exact-resume checkpoints.

Split out of :mod:`autodeeplab.search.loop` so that the loop there reads as the algorithm. A checkpoint
holds the
weights, α/β, both optimisers, the cosine schedule, the fp16 scalers, the RNG states, the position in the
epoch and in the trainB stream, and the split; :func:`load_resume_checkpoint` checks that a resumed
configuration still fits it before any data is read.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from autodeeplab import __version__
from autodeeplab.config.settings import config_to_dict
from autodeeplab.errors import CheckpointError, ConfigError, DataError
from autodeeplab.fast.precision import load_scaler_states, scaler_states
from autodeeplab.fileio import atomic_write_text
from autodeeplab.optim import load_optimizer_state
from autodeeplab.runs.resume import (
    PENDING_CHANGES,
    accept_resume_changes,
    check_resume_changes,
    checkpoint_must_fit,
    latest_for_resume,
)
from autodeeplab.runs.rundir import RunDir
from autodeeplab.runs.sampling import split_halves
from autodeeplab.runs.state import capture_rng_state, restore_rng_state
from autodeeplab.search.config import SearchConfig
from autodeeplab.space.contract import Architecture, SearchSpace

CHECKPOINT_FORMAT = "autodeeplab-search-1"
SEARCH_RECORDS = ("metrics.jsonl", "arch_history.jsonl")
"""The JSON-lines files of a search run (one line per epoch)."""
SEARCH_RESULTS = ("genotype.json", "dints_arch.json", "arch_params.json")
"""Written at each epoch end together with a checkpoint: with no checkpoint beside them, the run finished
and its checkpoints were deleted."""


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


# -- the split -------------------------------------------------------------------------------------
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
    run: RunDir,
    saved: dict | None,
    checkpoint: Path,
    num_samples: int,
    config: SearchConfig,
    echo: Callable[[str], None],
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


# -- records and checkpoints ------------------------------------------------------------------------
@torch.no_grad()
def write_architecture(run: RunDir, model: SearchSpace) -> tuple[dict[str, Any], Architecture]:
    """Write ``arch_params.json`` (the space's :meth:`arch_record`) and the decoded architecture (its
    ``FILE_NAME``) together, so that ``autodeeplab decode arch_params.json`` gives the file beside it."""
    record = model.arch_record()
    atomic_write_text(run.path / "arch_params.json", json.dumps(record) + "\n")
    architecture = model.decode()
    architecture.save(run.path / architecture.FILE_NAME)
    return record, architecture


def record_epoch(
    run: RunDir,
    model: SearchSpace,
    epoch: int,
    scores: dict[str, float],
    lr: float,
    losses: dict[str, float],
    tensorboard=None,
) -> Architecture:
    """Write the epoch's architecture files and metrics line; returns the decoded architecture.

    ``arch_params.json`` and a line of ``arch_history.jsonl`` hold the space's :meth:`arch_record`,
    ``genotype.json`` (``dints_arch.json``: the architecture's ``FILE_NAME``) its :meth:`decode`.
    ``losses``: the epoch means, ``train_loss`` of the weight steps
    and ``arch_loss`` of the architecture steps (absent in the warm-up epochs, which run none).
    """
    record, architecture = write_architecture(run, model)
    run.append_jsonl("arch_history.jsonl", {"epoch": epoch + 1, **record})
    metrics = {"phase": "search", "epoch": epoch + 1, **losses, **scores, "lr": lr}
    if hasattr(model, "epoch_metrics"):  # optional: e.g. the expected and decoded multiply-adds of a budget
        metrics.update(model.epoch_metrics())
    run.append_jsonl("metrics.jsonl", {**metrics, "genotype": architecture.short()})
    if tensorboard is not None:
        _log_tensorboard(tensorboard, metrics, record, epoch + 1)
    return architecture


def _log_tensorboard(tensorboard, metrics: dict[str, Any], record: dict[str, Any], step: int) -> None:
    """Scalars of the epoch, and each array of the architecture record as a histogram and an image."""
    for key in ("train_loss", "arch_loss", "val_miou", "val_dice", "lr"):
        if key in metrics:
            tensorboard.add_scalar(f"search/{key}", metrics[key], step)
    for key, value in record.items():
        array = np.asarray(value) if isinstance(value, list) else None
        if array is None or array.dtype.kind != "f":
            continue
        tensorboard.add_histogram(f"search/{key}_weights", array, step)
        scaled = array / max(float(array.max()), 1e-12)
        if array.ndim == 2:  # [rows, columns] as a one-channel image
            tensorboard.add_image(f"search/{key}", scaled[None], step)
        elif array.ndim == 3 and array.shape[-1] in (1, 3):  # Auto-DeepLab's β [L, levels, 3]: RGB
            tensorboard.add_image(f"search/{key}", scaled.transpose(2, 1, 0), step)
    tensorboard.flush()


def save_search_checkpoint(
    run: RunDir,
    model: SearchSpace,
    weight_opt: torch.optim.Optimizer,
    arch_opt: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    position: SearchPosition,
    config: SearchConfig,
    split: dict,
    num_classes: int,
) -> None:
    """Write the search's resumable state after an epoch or on an interrupt (``position``: where it
    stopped): weights, α/β, both optimizers, the scheduler, the data split and RNG states, with the
    settings they belong to; an atomic checkpoint file in ``run``."""
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


def load_resume_checkpoint(
    run: RunDir, config: SearchConfig, echo: Callable[[str], None]
) -> tuple[dict, Path] | None:
    """The newest good search checkpoint, once ``config`` is known to fit it (before any data is read);
    None when the run stopped before its first checkpoint (it starts again from the beginning).

    Allowed changes (:data:`RESUMABLE_KEYS`) are written to ``config.yaml`` under ``run_info.resumed_with``
    by :func:`restore_checkpoint`, once the checkpoint has been put back.
    """
    loaded = latest_for_resume(run, echo, SEARCH_RESULTS, SEARCH_RECORDS)
    if loaded is None:
        return None
    state, path = loaded
    if state.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path}: not a search checkpoint (format {state.get('format')!r})")
    changes = check_resume_changes(state.get("config", {}), config, RESUMABLE_KEYS, f"--resume {run.path}")
    position = SearchPosition(**state["position"])
    if config.epochs < position.epoch + (1 if position.batch else 0):
        raise ConfigError(
            f"--resume {run.path}: epochs {config.epochs} is less than the {position.epoch} epochs done"
        )
    state[PENDING_CHANGES] = changes  # recorded by restore_checkpoint once everything fits
    return state, path


def restore_checkpoint(
    run: RunDir,
    loaded: tuple[dict, Path],
    model: SearchSpace,
    optimizers: tuple[Any, Any, Any],
    num_classes: int,
    config: SearchConfig,
    echo: Callable[[str], None],
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
    with checkpoint_must_fit(path, "search's network"):
        model.load_state_dict(state["model"])
        load_optimizer_state(weight_opt, state["weight_optimizer"])
        load_optimizer_state(arch_opt, state["arch_optimizer"])
        scheduler.load_state_dict(state["scheduler"])
    if scheduler.T_max != config.epochs:
        _stretch_schedule(scheduler, config.epochs)
    restore_rng_state(state["rng"])
    device_type = next(model.parameters()).device.type
    load_scaler_states({"weight": weight_opt, "arch": arch_opt}, state.get("grad_scalers", {}), device_type)
    position = SearchPosition(**state["position"])
    accept_resume_changes(config, run.path, state.pop(PENDING_CHANGES, []), path.name, echo)
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
