"""The trained-model checkpoint: everything ``eval``, ``predict`` and ``export`` need, in one file.

``model.pt`` is written at every checkpoint and at the end (:func:`save_trained`). It is a
:mod:`autodeeplab.checkpoint_io` file (``torch.load(weights_only=True)``-safe, checksummed) whose state is
``{"kind": "trained-model", "model_format": MODEL_FORMAT, "autodeeplab_version", "model":
net.config_dict(), "info": TrainedInfo fields (dataset, class names, palette, ignore index, step, metrics,
...), "weights": state_dict}``. Training-state checkpoints (kind :data:`STATE_KIND`) embed the same record
under ``"trained"``, so :func:`load_model` reads either kind; :mod:`autodeeplab.train.state` writes them and
reads them back for ``--resume``.

The format number changes whenever the same weights would compute something else; files of an older
format are refused in one line that says why and to retrain (:data:`FORMAT_CHANGES`), never loaded into a
network they no longer fit.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from autodeeplab import __version__
from autodeeplab.checkpoint_io import load_checkpoint, save_checkpoint
from autodeeplab.errors import AutoDeepLabError, CheckpointError
from autodeeplab.nets.dints import DintsNet
from autodeeplab.nets.network import AutoDeepLabNet

TrainedNet = AutoDeepLabNet | DintsNet
"""A found network that ``model.pt`` holds: Auto-DeepLab's or DiNTS's (``model.kind == "dints"``)."""

MODEL_KIND = "trained-model"
STATE_KIND = "train-state"
"""A training-state checkpoint (:mod:`autodeeplab.train.state`): it holds a trained-model record under
``"trained"``, which :func:`load_model` reads."""
MODEL_FORMAT = 3
"""The format this version writes and reads (see :data:`FORMAT_CHANGES`)."""
FORMAT_CHANGES: dict[int, str] = {
    2: "strided atrous ops became resize → undilated conv, as in the released model",
    3: "the found network's resizes align corners, as in the released model",
}
"""What each format changed. Older weights would load but compute something else, so they are refused."""
MODEL_FILE = "model.pt"


@dataclass
class TrainedInfo:
    """What a trained model carries besides its weights."""

    dataset: str
    class_names: list[str]
    palette: list[list[int]]
    ignore_index: int
    step: int = 0
    iterations: int = 0
    metrics: dict[str, Any] | None = None
    dataset_options: dict[str, Any] = field(default_factory=dict)
    """Extra ``build_dataset`` options that evaluation needs to see the same data (synthetic size)."""
    data_root: str | None = None
    """The training data's folder (absolute), the default for ``eval``."""
    patch_size: list[int] | None = None
    """Volumes: the training patch (D, H, W), the sliding window of ``eval`` and ``predict``."""
    window_overlap: float | None = None
    """Volumes: the sliding window's overlap at evaluation."""
    autodeeplab_version: str = __version__

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @classmethod
    def from_record(cls, data: Any, source: str) -> TrainedInfo:
        """The ``"info"`` entry of a saved model, each field of its type (a one-line
        :class:`CheckpointError` naming ``source`` and the field otherwise): a file edited or written by
        other code must not fail later, in the middle of an evaluation or a prediction."""
        if not isinstance(data, dict):
            raise CheckpointError(f"{source}: info: expected an object")
        unknown = sorted(set(data) - {f.name for f in dataclasses.fields(cls)})
        if unknown:
            raise CheckpointError(f"{source}: info: unknown field {unknown[0]!r}")
        try:
            info = cls(**data)
        except TypeError:  # a required field missing
            required = "dataset, class_names, palette, ignore_index"
            raise CheckpointError(f"{source}: info: missing one of {required}") from None
        names, palette = info.class_names, info.palette
        checks = {
            "dataset": isinstance(info.dataset, str),
            "class_names": isinstance(names, list) and bool(names) and all(isinstance(n, str) for n in names),
            "palette": isinstance(palette, list)
            and len(palette) >= len(names)
            and all(_is_colour(c) for c in palette),
            "ignore_index": _is_int(info.ignore_index),
            "step": _is_int(info.step),
            "iterations": _is_int(info.iterations),
            "metrics": info.metrics is None or isinstance(info.metrics, dict),
            "dataset_options": isinstance(info.dataset_options, dict),
            "data_root": info.data_root is None or isinstance(info.data_root, str),
            "patch_size": info.patch_size is None
            or (isinstance(info.patch_size, list) and all(_is_int(v) and v > 0 for v in info.patch_size)),
            "window_overlap": info.window_overlap is None
            or (isinstance(info.window_overlap, (int, float)) and 0 <= info.window_overlap < 1),
            "autodeeplab_version": isinstance(info.autodeeplab_version, str),
        }
        wrong = [name for name, fine in checks.items() if not fine]
        if wrong:
            raise CheckpointError(f"{source}: info.{wrong[0]}: not what this package writes there")
        return info


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_colour(value: Any) -> bool:
    return isinstance(value, list) and len(value) == 3 and all(_is_int(v) and 0 <= v <= 255 for v in value)


def trained_record(model: TrainedNet, info: TrainedInfo) -> dict[str, Any]:
    """The weights-only-safe record of a trained model (see the module docstring)."""
    return {
        "kind": MODEL_KIND,
        "model_format": MODEL_FORMAT,
        "autodeeplab_version": info.autodeeplab_version,
        "model": model.config_dict(),
        "info": dataclasses.asdict(info),
        "weights": {k: v.detach().cpu() for k, v in model.state_dict().items()},
    }


def save_trained(path: str | os.PathLike[str], model: TrainedNet, info: TrainedInfo) -> None:
    """Write ``model.pt`` (the record of :func:`trained_record`) to ``path`` atomically."""
    save_checkpoint(path, trained_record(model, info))


def load_model(
    path: str | os.PathLike[str], num_classes: int | None = None, device: str | torch.device = "cpu"
) -> tuple[TrainedNet, TrainedInfo]:
    """Load ``model.pt`` (or a run directory holding one, or a training-state checkpoint), in eval mode.

    Raises:
        CheckpointError: missing, truncated or corrupt file, another format version, weights that do not
            fit the recorded network, or ``num_classes`` given and different from the checkpoint's.
    """
    path = Path(path)
    if path.is_dir():
        path = path / MODEL_FILE
    if not path.exists():
        raise CheckpointError(f"{path}: no such checkpoint")
    state = load_checkpoint(path)
    if state.get("kind") == STATE_KIND and isinstance(state.get("trained"), dict):
        state = state["trained"]
    if state.get("kind") != MODEL_KIND:
        raise CheckpointError(f"{path}: not a trained-model checkpoint (kind {state.get('kind')!r})")
    check_model_format(path, state)
    try:
        model = network_from_record(state["model"], source=str(path))
        info = TrainedInfo.from_record(state["info"], str(path))
        model.load_state_dict(state["weights"])
    except AutoDeepLabError as exc:
        raise CheckpointError(str(exc)) from None
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"{path}: malformed trained-model checkpoint ({exc})") from None
    except RuntimeError as exc:  # load_state_dict: missing/unexpected keys or shape mismatches
        first = str(exc).strip().splitlines()[0]
        raise CheckpointError(f"{path}: weights do not fit the network it describes ({first})") from None
    if info.num_classes != model.config.num_classes:
        raise CheckpointError(
            f"{path}: {info.num_classes} class names for a {model.config.num_classes}-class model"
        )
    if num_classes is not None:
        check_classes(path, info, num_classes, "the data")
    return model.to(device).eval(), info


def check_model_format(path: str | os.PathLike[str], record: dict[str, Any]) -> None:
    """Raise a one-line :class:`CheckpointError` unless ``record`` has this version's ``model_format``."""
    found = record.get("model_format")
    if found == MODEL_FORMAT:
        return
    written = f"written by autodeeplab {record.get('autodeeplab_version')}"
    if isinstance(found, int) and not isinstance(found, bool) and found < MODEL_FORMAT:
        changes = "; ".join(
            FORMAT_CHANGES[f] for f in range(found + 1, MODEL_FORMAT + 1) if f in FORMAT_CHANGES
        )
        raise CheckpointError(
            f"{path}: trained-model format {found} ({written}) is older than format {MODEL_FORMAT}, which "
            f"this version reads ({changes}); retrain the model with this version"
        )
    raise CheckpointError(
        f"{path}: trained-model format {found!r} ({written}) is not the format {MODEL_FORMAT} this version "
        "reads"
    )


def check_classes(
    path: str | os.PathLike[str],
    info: TrainedInfo,
    num_classes: int,
    what: str,
    class_names: Sequence[str] | None = None,
) -> None:
    """Raise :class:`CheckpointError` when ``what`` has another class count than the checkpoint, or (given
    its ``class_names``) other classes or the same in another order: the model's class i would be scored
    as the data's class i."""
    if num_classes != info.num_classes:
        raise CheckpointError(
            f"{path}: the checkpoint predicts {info.num_classes} classes ({info.dataset}) but {what} has "
            f"{num_classes}"
        )
    if class_names is not None and list(class_names) != list(info.class_names):
        raise CheckpointError(
            f"{path}: the checkpoint's classes {list(info.class_names)} are not {what}'s "
            f"{list(class_names)} (in this order): its class i would be scored as the data's class i"
        )


def network_from_record(data: Any, source: str = "model") -> TrainedNet:
    """The network a ``model.pt`` record's ``"model"`` entry describes (DiNTS when its kind says so)."""
    if isinstance(data, dict) and data.get("kind") == "dints":
        return DintsNet.from_config_dict(data, source=source)
    return AutoDeepLabNet.from_config_dict(data, source=source)
