"""The retraining's state on disk: exact-resume checkpoints and ``model.pt``.

Split out of :mod:`autodeeplab.train.loop` so that the loop there reads as the training algorithm (as
:mod:`autodeeplab.search.state` is for the search). A training checkpoint (kind
:data:`~autodeeplab.nets.model_file.STATE_KIND`) holds the resolved settings, the step, the optimiser and
RNG states and the trained-model record that ``model.pt`` holds too
(:func:`~autodeeplab.nets.model_file.trained_record`), so that ``eval`` reads either file.
:func:`load_training_state` checks that a resumed configuration still fits the newest good checkpoint
before any data is read; :func:`restore_training_state` puts it back.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from autodeeplab import __version__
from autodeeplab.config.settings import config_to_dict
from autodeeplab.errors import CheckpointError, ConfigError
from autodeeplab.nets.model_file import (
    MODEL_FILE,
    STATE_KIND,
    TrainedInfo,
    check_classes,
    check_model_format,
    save_trained,
    trained_record,
)
from autodeeplab.nets.network import AutoDeepLabNet
from autodeeplab.optim import load_optimizer_state
from autodeeplab.runs.resume import (
    PENDING_CHANGES,
    accept_resume_changes,
    check_resume_changes,
    checkpoint_must_fit,
    latest_for_resume,
)
from autodeeplab.runs.rundir import RunDir
from autodeeplab.runs.state import capture_rng_state, restore_rng_state
from autodeeplab.train.config import RESUMABLE_KEYS, TrainConfig

TRAIN_RESULTS = (MODEL_FILE,)
"""Written when the training ends: with no checkpoint beside it, the run finished and its checkpoints
were deleted."""


def save_training_state(
    run: RunDir,
    model: AutoDeepLabNet,
    optimizer: torch.optim.Optimizer,
    info: TrainedInfo,
    config: TrainConfig,
) -> None:
    """Write a rotated training checkpoint ``step<NNNNNNNN>``, then ``model.pt`` (:func:`save_trained`)."""
    state = {
        "kind": STATE_KIND,
        "autodeeplab_version": __version__,
        "config": config_to_dict(config),
        "step": info.step,
        "optimizer": optimizer.state_dict(),
        "rng": capture_rng_state(),
        "trained": trained_record(model, info),
    }
    run.checkpoints.save(state, f"step{info.step:08d}")
    save_trained(run.file(MODEL_FILE), model, info)


def load_training_state(
    run: RunDir, config: TrainConfig, echo: Callable[[str], None]
) -> tuple[dict[str, Any], Path] | None:
    """The newest good training checkpoint, once ``config`` is known to fit it (before any data is read);
    None when the run stopped before its first checkpoint (it starts again from the beginning).

    Only :data:`autodeeplab.train.config.RESUMABLE_KEYS` may differ from the checkpoint's settings; such
    changes are written to ``config.yaml`` (``run_info.resumed_with``) by :func:`restore_training_state`, once
    the checkpoint has been put back. Any other change is a one-line
    :class:`ConfigError`.
    """
    loaded = latest_for_resume(run, echo, TRAIN_RESULTS, ("metrics.jsonl",))
    if loaded is None:
        return None
    state, path = loaded
    if state.get("kind") != STATE_KIND:
        raise CheckpointError(f"{path}: not a training checkpoint (kind {state.get('kind')!r})")
    if isinstance(state.get("trained"), dict):  # weights of an older format must not be trained further
        check_model_format(path, state["trained"])
    changes = check_resume_changes(state.get("config", {}), config, RESUMABLE_KEYS, f"--resume {run.path}")
    if config.iterations < int(state["step"]):
        raise ConfigError(
            f"--resume {run.path}: iterations {config.iterations} is less than the {state['step']} steps done"
        )
    state[PENDING_CHANGES] = changes  # recorded by restore_training_state once everything fits
    return state, path


def restore_training_state(
    run: RunDir,
    loaded: tuple[dict[str, Any], Path],
    model: AutoDeepLabNet,
    optimizer: torch.optim.Optimizer,
    info: TrainedInfo,
    config: TrainConfig,
    echo: Callable[[str], None],
) -> tuple[int, dict[str, Any] | None]:
    """Put a checkpoint's weights, optimiser and RNG states back; ``(step, last metrics)``.

    The data must have the checkpoint's classes (``data.root`` may move, so it is checked here, not by the
    config comparison); weights that do not fit are a one-line :class:`CheckpointError`.
    """
    state, path = loaded
    try:
        saved = TrainedInfo.from_record(state["trained"]["info"], str(path))
    except (KeyError, TypeError) as exc:
        raise CheckpointError(f"{path}: malformed training checkpoint ({exc})") from None
    check_classes(path, saved, info.num_classes, f"{info.dataset} {_train_split(state)}")
    if saved.class_names != info.class_names:
        raise CheckpointError(
            f"{path}: the checkpoint's classes {saved.class_names} differ from the data's {info.class_names}"
        )
    with checkpoint_must_fit(path, "training's network"):
        model.load_state_dict(state["trained"]["weights"])
        load_optimizer_state(optimizer, state["optimizer"])
    restore_rng_state(state["rng"])
    step = int(state["step"])
    accept_resume_changes(config, run.path, state.pop(PENDING_CHANGES, []), path.name, echo)
    run.filter_jsonl("metrics.jsonl", lambda r: r.get("step", 0) <= step)
    return step, saved.metrics


def _train_split(state: dict[str, Any]) -> str:
    """The training split named in a checkpoint's settings (for messages)."""
    return str(state.get("config", {}).get("data", {}).get("train_split", "train"))
