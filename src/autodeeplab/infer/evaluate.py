"""Inference (single-scale, multi-scale + flip, optional sliding window) and evaluation over a split.

Works with any ``nn.Module`` mapping ``[N, 3, H, W]`` images to ``[N, K, H, W]`` logits.

Multi-scale inference follows DeepLab's ``predict_labels_multi_scale``: the image is resized by each
scale, the logits are resized back to the input size, turned into class probabilities with a softmax,
and the probabilities of all scales (and of their horizontally flipped copies) are averaged. With
scales ``[1.0]`` and no flip this is exactly the softmax of one forward pass, so the predicted labels
equal single-scale inference bit for bit.

The optional sliding window (for images too large for memory) runs the network on overlapping tiles
of at most ``window`` pixels and averages the probabilities where tiles overlap.

:class:`EvalConfig` holds the settings of an evaluation (split, inference, image count, device) as a
typed config of :mod:`autodeeplab.config.settings`, with presets ``cpu`` (single scale, no flip: the default)
and ``paper`` (scales 0.5 .. 1.75 + flip, the paper's test-set inference). Results are written as
JSON by :func:`write_eval_json`, marked with :data:`EVAL_JSON_KIND` so that a later evaluation knows
which files it may replace.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from autodeeplab import __version__
from autodeeplab.config.checks import at_least_one_or_null, below_one, dotted
from autodeeplab.config.settings import config_to_dict, register_presets
from autodeeplab.errors import ConfigError
from autodeeplab.fileio import atomic_write_json, loads_json
from autodeeplab.infer.metrics import ConfusionMatrix, SegmentationMetrics
from autodeeplab.ops.primitives import resize
from autodeeplab.runs.distributed import sum_over_ranks

DEFAULT_WINDOW_OVERLAP = 1.0 / 3.0
"""Fraction of a sliding-window tile shared with its neighbour (DeepLab/PSPNet use about a third)."""

EVAL_JSON_KIND = "autodeeplab-eval"
"""The ``kind`` of every results JSON this package writes."""


@dataclass(frozen=True)
class InferenceSettings:
    """How to turn an image into class probabilities.

    Attributes:
        scales: image resize factors; the paper's multi-scale tables use 0.5 .. 1.75 in steps of 0.25.
        flip: also run each scale on the horizontally flipped image.
        window: ``(h, w)`` tile size for sliding-window inference, or ``None`` for whole images.
        window_overlap: fraction of a tile shared with its neighbour, in ``[0, 1)``.
    """

    scales: tuple[float, ...] = (1.0,)
    flip: bool = False
    window: tuple[int, int] | None = None
    window_overlap: float = DEFAULT_WINDOW_OVERLAP

    def __post_init__(self) -> None:
        if not self.scales:
            raise ValueError("scales must not be empty")
        if any(not (s > 0 and math.isfinite(s)) for s in self.scales):
            raise ValueError(f"scales must be positive, got {list(self.scales)}")
        if self.window is not None and (len(self.window) != 2 or min(self.window) < 1):
            raise ValueError(f"window must be two positive sizes, got {self.window}")
        if not 0.0 <= self.window_overlap < 1.0:
            raise ValueError(f"window_overlap must be in [0, 1), got {self.window_overlap}")


PAPER_SCALES: tuple[float, ...] = (0.5, 0.75, 1.0, 1.25, 1.5, 1.75)
"""The paper's multi-scale inference (with flip) for its test-set tables, as in DeepLab."""

PAPER_MULTI_SCALE = InferenceSettings(scales=PAPER_SCALES, flip=True)


@dataclass
class EvalConfig:
    """Everything an evaluation depends on besides the checkpoint; recorded in the results JSON.

    Defaults are single-scale inference without flip (the paper's validation-set figures); the
    ``paper`` preset is its multi-scale + flip test-set inference.
    """

    split: str = "val"
    dataset: str | None = None
    """Dataset name; ``None``: the one the model was trained on."""
    data_root: str | None = None
    """Dataset folder; ``None``: the training run's folder (when the dataset is the training one)."""
    scales: tuple[float, ...] = (1.0,)
    flip: bool = False
    window: tuple[int, ...] | None = None
    """Sliding-window tile ``[h, w]`` for images too large for memory; ``None``: whole images. For
    volumes ``[d, h, w]``; ``None``: the model's training patch."""
    window_overlap: float = DEFAULT_WINDOW_OVERLAP
    largest_component: bool = False
    """Volumes: cut each class to its largest connected piece before scoring (nnU-Net's post-processing)."""
    max_images: int | None = None
    """Evaluate the first N images only; ``None``: the whole split."""
    device: str = "auto"
    """``auto`` (CUDA when present), ``cpu`` or ``cuda[:i]``."""

    def __post_init__(self) -> None:
        self.scales = tuple(self.scales)
        self.window = tuple(self.window) if self.window is not None else None
        self.validate()

    def validate(self, where: str = "") -> None:
        """Raise :class:`ConfigError` naming ``{where}.{field}`` (bare at the top level, ``where=""``) for the
        first value that cannot work.

        Runs when the settings are built (a bad file, ``--set`` or flag fails at once).
        """
        if not self.split:
            raise ConfigError(f"{dotted(where, 'split')}: must not be empty")
        at_least_one_or_null(dotted(where, "max_images"), self.max_images)
        if not self.scales or any(not (s > 0 and math.isfinite(s)) for s in self.scales):
            raise ConfigError(f"{dotted(where, 'scales')}: must be positive, got {list(self.scales)}")
        if self.window is not None and (len(self.window) not in (2, 3) or min(self.window) < 1):
            raise ConfigError(
                f"{dotted(where, 'window')}: must be two (images) or three (volumes) positive sizes, "
                f"got {list(self.window)}"
            )
        below_one(dotted(where, "window_overlap"), self.window_overlap)

    def inference_settings(self) -> InferenceSettings:
        """The inference part of these settings."""
        return InferenceSettings(self.scales, self.flip, self.window, self.window_overlap)


EVAL_PRESETS: dict[str, dict[str, Any]] = {
    "cpu": {},  # the defaults: one forward pass per image
    "paper": {"scales": list(PAPER_SCALES), "flip": True},
}
DEFAULT_EVAL_PRESET = "cpu"
register_presets(EvalConfig, EVAL_PRESETS)


@torch.no_grad()
def sliding_window_logits(
    model: nn.Module, image: torch.Tensor, window: tuple[int, int], overlap: float
) -> torch.Tensor:
    """Logits ``[N, K, H, W]`` of ``image`` ``[N, 3, H, W]`` from overlapping tiles (logits averaged)."""
    _, _, h, w = image.shape
    th, tw = min(window[0], h), min(window[1], w)
    rows = _tile_starts(h, th, overlap)
    cols = _tile_starts(w, tw, overlap)
    total: torch.Tensor | None = None
    count = torch.zeros(1, 1, h, w, dtype=image.dtype, device=image.device)
    for y in rows:
        for x in cols:
            out = model(image[:, :, y : y + th, x : x + tw])
            if total is None:
                total = torch.zeros(out.shape[0], out.shape[1], h, w, dtype=out.dtype, device=out.device)
            total[:, :, y : y + th, x : x + tw] += out
            count[:, :, y : y + th, x : x + tw] += 1
    assert total is not None  # at least one tile always exists
    return total / count


def _tile_starts(size: int, tile: int, overlap: float) -> list[int]:
    """Start offsets of tiles of length ``tile`` covering ``0 .. size`` with the given overlap."""
    if tile >= size:
        return [0]
    step = max(1, int(tile * (1.0 - overlap)))
    starts = list(range(0, size - tile, step))
    starts.append(size - tile)  # the last tile ends flush with the border
    return starts


@torch.no_grad()
def forward_logits(model: nn.Module, image: torch.Tensor, settings: InferenceSettings) -> torch.Tensor:
    """One forward pass at the image's own size: whole image or sliding window. ``[N, K, H, W]``."""
    if settings.window is None:
        return model(image)
    return sliding_window_logits(model, image, settings.window, settings.window_overlap)


@torch.no_grad()
def predict_probabilities(
    model: nn.Module, image: torch.Tensor, settings: InferenceSettings | None = None
) -> torch.Tensor:
    """Class probabilities ``[N, K, H, W]`` of ``image`` ``[N, 3, H, W]``, averaged over scales and flips.

    The model must already be in eval mode (see :func:`evaluate`). ``settings`` defaults to single-scale.
    """
    settings = settings or InferenceSettings()
    size = tuple(image.shape[2:])
    total: torch.Tensor | None = None
    runs = 0
    for scale in settings.scales:
        scaled_size = tuple(max(1, round(s * scale)) for s in size)
        scaled = resize(image, scaled_size)
        views = [False, True] if settings.flip else [False]
        for flipped in views:
            x = scaled.flip(-1) if flipped else scaled
            logits = forward_logits(model, x, settings)
            if flipped:
                logits = logits.flip(-1)
            probs = torch.softmax(resize(logits, size), dim=1)
            total = probs if total is None else total + probs
            runs += 1
    assert total is not None
    return total if runs == 1 else total / runs


@torch.no_grad()
def predict_labels(
    model: nn.Module, image: torch.Tensor, settings: InferenceSettings | None = None
) -> torch.Tensor:
    """Predicted labels ``[N, H, W]`` (int64) of ``image`` ``[N, 3, H, W]``."""
    return predict_probabilities(model, image, settings).argmax(dim=1)


@dataclass
class EvalResult:
    """What :func:`evaluate` measured, ready for a table and for JSON."""

    metrics: SegmentationMetrics
    num_images: int
    seconds: float
    settings: InferenceSettings
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """Results as JSON types: kind and package version first, then ``extra``, settings, metrics."""
        return {
            "kind": EVAL_JSON_KIND,
            "autodeeplab_version": __version__,
            **self.extra,
            "num_images": self.num_images,
            "seconds": round(self.seconds, 3),
            "scales": list(self.settings.scales),
            "flip": self.settings.flip,
            "window": list(self.settings.window) if self.settings.window else None,
            **self.metrics.to_dict(),
        }


def evaluate(
    model: nn.Module,
    samples: Iterable[tuple[torch.Tensor, torch.Tensor]],
    num_classes: int,
    class_names: Sequence[str] | None = None,
    ignore_index: int = 255,
    settings: InferenceSettings | None = None,
    device: str | torch.device = "cpu",
    max_images: int | None = None,
    progress: Callable[[int], None] | None = None,
    world: int = 1,
) -> EvalResult:
    """Accumulate one confusion matrix over ``samples`` and return its metrics.

    Args:
        samples: ``(image [3, H, W] or [N, 3, H, W], mask [H, W] or [N, H, W])`` pairs, e.g. a dataset
            built with the evaluation transform or a ``DataLoader`` over it.
        max_images: stop after this many images (quick checks); ``None`` evaluates everything.
        progress: called with the number of images done after each sample.
        world: in a distributed run, the number of ranks: each passes its own share of the samples
            (:func:`~autodeeplab.runs.distributed.shard_indices`) and every rank gets the metrics of all of
            them (the confusion matrices and image counts are summed: integers, so exactly one process's).

    The model is put in eval mode (BN running statistics, drop path off) and restored afterwards.
    """
    settings = settings or InferenceSettings()
    was_training = model.training
    model.eval()
    cm = ConfusionMatrix(num_classes, ignore_index)
    done = 0
    start = time.perf_counter()
    try:
        for image, mask in samples:
            if image.dim() == 3:
                image, mask = image.unsqueeze(0), mask.unsqueeze(0)
            if max_images is not None and done >= max_images:
                break
            if max_images is not None and done + image.shape[0] > max_images:
                keep = max_images - done
                image, mask = image[:keep], mask[:keep]
            pred = predict_labels(model, image.to(device), settings)
            cm.update(pred.cpu(), mask)
            done += image.shape[0]
            if progress is not None:
                progress(done)
    finally:
        model.train(was_training)
    if world > 1:
        counts = sum_over_ranks(torch.cat([cm.matrix.reshape(-1), torch.tensor([done])]), world)
        cm.matrix, done = counts[:-1].reshape(num_classes, num_classes).clone(), int(counts[-1])
    return EvalResult(cm.compute(class_names), done, time.perf_counter() - start, settings)


_LEGACY_EVAL_KEYS = frozenset({"checkpoint", "num_images", "scales", "confusion", "miou"})
"""Keys of the results JSON written before it carried a ``kind`` (also ours, also replaceable)."""


def is_eval_json(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is a results JSON written by this package (so a new evaluation may replace it)."""
    try:
        data = loads_json(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return False
    if not isinstance(data, dict):
        return False
    return data.get("kind") == EVAL_JSON_KIND or ("kind" not in data and set(data) >= _LEGACY_EVAL_KEYS)


def write_eval_json(
    path: str | os.PathLike[str], result: EvalResult, config: EvalConfig | None = None
) -> None:
    """Write ``result`` (plus the resolved ``config`` under ``"config"``) as JSON atomically.

    The caller decides whether ``path`` may be replaced (see :func:`is_eval_json`).
    """
    data = result.to_dict()
    if config is not None:
        data["config"] = config_to_dict(config)
    atomic_write_json(path, data)
