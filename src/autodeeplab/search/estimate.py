"""Predict a search's memory and time before it starts (``autodeeplab search --estimate``).

Memory: the activations kept for the backward are counted exactly (:class:`SavedTensorCounter`) with one
forward of the real supernet (same F, L, B, batch, precision and execution switches) at a small calibration
crop, then each saved tensor is scaled to the target crop by the ratio of the areas of its resolution (the
input, the stem's stride 2, levels 0–3): activations are linear in the pixels of their own resolution, so
only the ceil() of odd sizes is extrapolated. Parameters, gradients and optimizer state are counted
directly. Time: one weight step and one architecture step are timed at two calibration crops on the
target device (after a warm-up) and fitted as ``a + b · pixels``; the projected search multiplies by the
number of steps, and adds each epoch's validation (an evaluation forward timed the same way, at the
validation's image size, times the images validated). ``benchmarks/README.md`` compares both with
measurements. The counting and scaling of saved activations live in :mod:`autodeeplab.search.saved_memory`.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from autodeeplab.data.registry import build_dataset, dataset_class
from autodeeplab.errors import AutoDeepLabError
from autodeeplab.fast.memory import GIB
from autodeeplab.fast.supernet import build_supernet
from autodeeplab.ops.losses import make_loss
from autodeeplab.runs.sampling import batches_per_epoch
from autodeeplab.search.config import SearchConfig
from autodeeplab.search.dispatch_probe import count_search_steps, format_dispatches
from autodeeplab.search.loop import arch_step, make_optimizers, weight_step
from autodeeplab.search.saved_memory import count_saved, scale_saved_bytes

CALIBRATION_CROP = 97
"""Crop of the memory calibration: its resolutions (97, 49, 25, 13, 7, 4) differ from each other and from
kernel sizes 1, 3, 5, so that every saved tensor's resolution is identified by its last two dims."""
TIME_CROPS = (65, 129)
"""Crops of the two timed iterations (the target crop itself when it is not larger)."""
KNOWN_TRAIN_IMAGES = {("cityscapes", "train"): 2975, ("camvid", "train"): 367, ("ade20k", "train"): 20210}
"""Training-split sizes used when the dataset is not on this machine (for the projected search time)."""
KNOWN_VAL_IMAGES = {("cityscapes", "val"): 500, ("camvid", "val"): 101, ("ade20k", "val"): 2000}
KNOWN_IMAGE_SIZES = {"cityscapes": (1024, 2048), "camvid": (360, 480), "ade20k": (512, 683)}
"""(H, W) of whole validation images when the dataset is not on this machine (ADE20K: a typical one)."""


@dataclass(frozen=True)
class SearchSchedule:
    """How many steps of each kind a search makes: the paper's by default (§5.1: 40 epochs over
    Cityscapes' 2,975 training images split into two halves, batch 2, architecture steps from epoch 20)."""

    train_images: int = KNOWN_TRAIN_IMAGES[("cityscapes", "train")]
    batch_size: int = 2
    epochs: int = 40
    arch_start_epoch: int = 20

    @property
    def steps_per_epoch(self) -> int:
        """Weight steps per epoch: full batches of trainA (the larger half, like ``split_halves``)."""
        return batches_per_epoch((self.train_images + 1) // 2, self.batch_size)


def projected_search_seconds(
    weight_step_seconds: float,
    arch_step_seconds: float,
    steps_per_epoch: int,
    epochs: int,
    arch_start_epoch: int,
) -> float:
    """Wall time of a search's steps (no validation, no data loading): a weight step every step of every
    epoch, an architecture step after each from epoch ``arch_start_epoch`` (0-based) on."""
    arch_epochs = max(epochs - arch_start_epoch, 0)
    return steps_per_epoch * (epochs * weight_step_seconds + arch_epochs * arch_step_seconds)


@dataclass
class SearchEstimate:
    """Predicted memory (bytes) and time (seconds) of a search run."""

    device: str
    crop_size: int
    batch_size: int
    saved_bytes_weight_step: int
    saved_bytes_arch_step: int
    state_bytes: int
    """Parameters + their gradients + optimizer state (SGD momentum, Adam moments)."""
    weight_step_seconds: float | None = None
    arch_step_seconds: float | None = None
    steps_per_epoch: int | None = None
    steps_note: str = ""
    epochs: int = 0
    arch_start_epoch: int = 0
    val_images: int | None = None
    """Images validated after each epoch (``data.max_val_images`` applied); None: unknown."""
    sample_shape: tuple[int, ...] | None = None
    """Volumes: the patch (D, H, W) the figures are for (``crop_size`` is then 0)."""
    val_pixels: int | None = None
    """Pixels of one validation image (the crop with ``data.val_crop``)."""
    val_image_seconds: float | None = None
    """One evaluation forward of the supernet on one validation image."""
    dispatches: dict | None = None
    """Operator dispatches of a weight and an architecture step (:mod:`~autodeeplab.search.dispatch_probe`),
    counted at ``dispatch_crop``; FLOPs scaled to the target by ``flop_scale``."""
    flop_scale: float = 1.0

    @property
    def val_epoch_seconds(self) -> float | None:
        if self.val_images is None or self.val_image_seconds is None:
            return None
        return self.val_images * self.val_image_seconds

    @property
    def peak_bytes(self) -> int:
        """Saved activations of the larger step plus the model's state (workspace not included)."""
        return max(self.saved_bytes_weight_step, self.saved_bytes_arch_step) + self.state_bytes

    @property
    def iteration_seconds(self) -> float | None:
        if self.weight_step_seconds is None or self.arch_step_seconds is None:
            return None
        return self.weight_step_seconds + self.arch_step_seconds

    @property
    def search_hours(self) -> float | None:
        """Weight steps every epoch, architecture steps from ``arch_start_epoch`` on, and each epoch's
        validation when its size is known."""
        if self.iteration_seconds is None or self.steps_per_epoch is None:
            return None
        seconds = projected_search_seconds(
            self.weight_step_seconds,
            self.arch_step_seconds,
            self.steps_per_epoch,
            self.epochs,
            self.arch_start_epoch,
        )
        return (seconds + self.epochs * (self.val_epoch_seconds or 0.0)) / 3600


def _dataset_facts(config: SearchConfig) -> tuple[int, int | None, str]:
    """(classes, training images or None, where the image count comes from)."""
    d = config.data
    options = {"seed": config.seed}
    if d.dataset == "synthetic":
        options.update(num_samples=d.synthetic_train_samples, size=d.synthetic_size)
    try:
        dataset = build_dataset(d.dataset, d.root, d.train_split, **options)
        return dataset.num_classes, len(dataset), f"{len(dataset)} {d.dataset} {d.train_split} images"
    except AutoDeepLabError:
        classes = len(dataset_class(d.dataset).class_names) or 19
        known = KNOWN_TRAIN_IMAGES.get((d.dataset, d.train_split))
        note = f"{known} images assumed ({d.dataset} {d.train_split} not found)" if known else ""
        return classes, known, note


def _validation_facts(config: SearchConfig) -> tuple[int | None, int | None]:
    """(images validated per epoch, pixels of one) — None where the dataset is not on this machine and
    its size is not known."""
    d = config.data
    options: dict = {"seed": config.seed}
    if d.dataset == "synthetic":
        options.update(num_samples=d.synthetic_val_samples, size=d.synthetic_size)
    if d.dataset == "folder":
        options.update(split_fractions=d.split_fractions, split_seed=d.split_seed)
    try:
        dataset = build_dataset(d.dataset, d.root, d.val_split, **options)
        count, size = len(dataset), dataset.image_size
    except AutoDeepLabError:
        count = KNOWN_VAL_IMAGES.get((d.dataset, d.val_split))
        size = KNOWN_IMAGE_SIZES.get(d.dataset)
    if count is not None and d.max_val_images is not None:
        count = min(count, d.max_val_images)
    pixels = d.crop_size**2 if d.val_crop else (size[0] * size[1] if size else None)
    return count, pixels


def _time_forward(
    model, device: torch.device, crop: int, batch: int, repeats: int, shape: tuple[int, ...] | None = None
) -> float:
    """Median seconds per image of an evaluation forward (eval mode, no gradients) of ``batch``
    ``crop`` × ``crop`` images (or of ``shape`` = ``(C, *S)`` samples, e.g. volume patches)."""
    images = torch.randn(batch, *(shape or (3, crop, crop)), device=device)
    was_training = model.training
    model.eval()
    times = []
    try:
        with torch.no_grad():
            for _ in range(repeats + 1):
                _synchronize(device)
                start = time.perf_counter()
                model(images)
                _synchronize(device)
                times.append(time.perf_counter() - start)
    finally:
        model.train(was_training)
    rest = sorted(times[1:])
    return rest[len(rest) // 2] / batch


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _time_steps(
    model, config, device, crop: int, classes: int, repeats: int, shape: tuple[int, ...] | None = None
) -> tuple[float, float]:
    """Median seconds of a weight step and an architecture step at ``crop`` (or on samples of ``shape`` =
    ``(C, *S)``, e.g. volume patches, with the volumes' Dice + cross-entropy) after one warm-up."""
    weight_opt, arch_opt, _ = make_optimizers(model, config)
    shape = shape or (3, crop, crop)
    images = torch.randn(config.batch_size, *shape, device=device)
    masks = torch.randint(0, classes, (config.batch_size, *shape[1:]), device=device)
    criterion = make_loss("dice_ce" if len(shape) == 4 else "ce", 255)
    times: list[tuple[float, float]] = []
    for _ in range(repeats + 1):
        _synchronize(device)
        start = time.perf_counter()
        weight_step(model, images, masks, weight_opt, criterion, config.grad_clip, config.execution.precision)
        _synchronize(device)
        middle = time.perf_counter()
        arch_step(model, images, masks, arch_opt, criterion, config.execution.precision)
        _synchronize(device)
        times.append((middle - start, time.perf_counter() - middle))
    w = sorted(t[0] for t in times[1:])
    a = sorted(t[1] for t in times[1:])
    return w[len(w) // 2], a[len(a) // 2]


def estimate_search(
    config: SearchConfig,
    device: torch.device,
    measure_time: bool = True,
    repeats: int = 1,
    echo: Callable[[str], None] = lambda s: None,
    quiet: bool = False,
) -> SearchEstimate:
    """Predict memory and time of ``run_search(config)`` on ``device`` (see the module docstring).

    The supernet's weights are random: memory and time do not depend on their values. ``quiet``: no bar
    while a volume search's data are read.
    """
    config.validate()  # settings changed after they were built fail here, as in run_search
    config.execution.check_device(device.type)
    if config.space.spatial_dims == 3 or config.search_space != "autodeeplab":
        from autodeeplab.search.estimate_volumes import estimate_volume_search

        return estimate_volume_search(config, device, measure_time, repeats, echo, quiet)
    classes, images, note = _dataset_facts(config)
    torch.manual_seed(config.seed)
    model = build_supernet(config.space, classes, execution=config.execution).to(device)
    crop, batch = config.data.crop_size, config.batch_size
    calibration = min(crop, CALIBRATION_CROP)
    echo(f"counting saved activations at {calibration}x{calibration} ...")
    x = torch.randn(batch, 3, calibration, calibration, device=device)
    y = torch.randint(0, classes, (batch, calibration, calibration), device=device)
    criterion = nn.CrossEntropyLoss()
    saved = {
        step: scale_saved_bytes(
            count_saved(model, x, y, criterion, step, config.execution.precision), calibration, crop
        )
        for step in ("weight", "arch")
    }
    weights = sum(p.numel() * p.element_size() for p in model.weight_parameters())
    arch = sum(p.numel() * p.element_size() for p in model.arch_parameters())
    state = 3 * weights + 4 * arch  # param + grad + momentum; param + grad + two Adam moments
    estimate = SearchEstimate(
        str(device), crop, batch, saved["weight"], saved["arch"], state, epochs=config.epochs
    )
    estimate.arch_start_epoch = config.arch_start_epoch
    if images is not None:
        steps = batches_per_epoch((images + 1) // 2, batch)
        estimate.steps_per_epoch = min(steps, config.steps_per_epoch) if config.steps_per_epoch else steps
        estimate.steps_note = note
    if measure_time:
        crops = sorted({min(c, crop) for c in TIME_CROPS})
        points = []
        for c in crops:
            echo(f"timing one weight step and one architecture step at {c}x{c} ...")
            points.append((c, *_time_steps(model, config, device, c, classes, repeats)))
        estimate.weight_step_seconds = _extrapolate([(c, w) for c, w, _ in points], crop)
        estimate.arch_step_seconds = _extrapolate([(c, a) for c, _, a in points], crop)
    if measure_time:
        c = min(crop, TIME_CROPS[0])
        echo(f"counting the operators of a weight step and an architecture step at {c}x{c} ...")
        estimate.dispatches = count_search_steps(model, config, device, (3, c, c), classes)
        estimate.flop_scale = (crop / c) ** 2
    estimate.val_images, estimate.val_pixels = _validation_facts(config)
    if measure_time and estimate.val_images and estimate.val_pixels:
        echo("timing one validation forward ...")
        sides = sorted({min(c, crop) for c in TIME_CROPS})
        # Centre crops are validated in batches of batch_size, whole images one at a time.
        batch = config.batch_size if config.data.val_crop else 1
        forwards = [(c, _time_forward(model, device, c, batch, repeats)) for c in sides]
        estimate.val_image_seconds = _extrapolate(forwards, math.isqrt(estimate.val_pixels))
    return estimate


def _extrapolate(points: list[tuple[int, float]], crop: int) -> float:
    """Fit ``t = a + b · pixels`` through the timed crops (one point: proportional); evaluate at ``crop``."""
    if len(points) == 1:
        c, t = points[0]
        return t * (crop / c) ** 2
    (c0, t0), (c1, t1) = points[0], points[-1]
    slope = max((t1 - t0) / (c1**2 - c0**2), 0.0)
    return t1 + slope * (crop**2 - c1**2)


def _duration(seconds: float) -> str:
    if seconds < 3600:
        return f"{seconds / 60:.0f} min" if seconds >= 60 else f"{seconds:.0f} s"
    return f"{seconds / 3600:.1f} hours" if seconds < 72 * 3600 else f"{seconds / 86400:.1f} days"


def format_estimate(e: SearchEstimate) -> str:
    """A few readable lines: memory, time per iteration, projected search time."""
    sample = (
        f"{'patch' if len(e.sample_shape) == 3 else 'crop'} {'x'.join(map(str, e.sample_shape))}"
        if e.sample_shape
        else f"crop {e.crop_size}x{e.crop_size}"
    )
    lines = [
        f"estimate for {sample}, batch {e.batch_size}, on {e.device}:",
        f"  activations kept for backward: weight step {e.saved_bytes_weight_step / GIB:.2f} GiB, "
        f"architecture step {e.saved_bytes_arch_step / GIB:.2f} GiB",
        f"  parameters + gradients + optimizer state: {e.state_bytes / GIB:.2f} GiB",
        f"  peak memory (both, without framework workspace): about {e.peak_bytes / GIB:.2f} GiB",
    ]
    if e.iteration_seconds is not None:
        lines.append(
            f"  time: weight step {e.weight_step_seconds:.2f} s + architecture step "
            f"{e.arch_step_seconds:.2f} s = {e.iteration_seconds:.2f} s per iteration"
        )
    if e.iteration_seconds is None:
        lines.append("  time: not measured (memory-only estimate; --estimate times a few steps)")
    if e.dispatches is not None:
        lines.extend(format_dispatches(e.dispatches, e.flop_scale))
    if e.search_hours is not None:
        lines.append(
            f"  full search: {e.epochs} epochs x {e.steps_per_epoch} steps "
            f"(architecture steps from epoch {e.arch_start_epoch + 1}; {e.steps_note}): "
            f"about {_duration(e.search_hours * 3600)}"
            + (" with validation" if e.val_epoch_seconds is not None else " without validation")
        )
    if e.val_epoch_seconds is not None:
        side = math.isqrt(e.val_pixels or 0)
        unit = " voxels" if e.sample_shape and len(e.sample_shape) == 3 else " pixels"
        size = "x".join(map(str, e.sample_shape)) + unit if e.sample_shape else f"{side}x{side} pixels"
        lines.append(
            f"  validation: {e.val_images} images of about {size} after each epoch, "
            f"about {_duration(e.val_epoch_seconds)} each (data.max_val_images, data.val_crop)"
        )
    elif e.iteration_seconds is not None:
        lines.append("  validation: not counted (validation split size or image size unknown)")
    if e.iteration_seconds is not None and e.steps_per_epoch is None:
        lines.append("  full search: unknown epoch length (dataset not found; set steps_per_epoch)")
    if math.isfinite(e.peak_bytes) and e.device.startswith("cuda") and torch.cuda.is_available():
        total = torch.cuda.get_device_properties(torch.device(e.device)).total_memory
        verdict = "fits" if e.peak_bytes < 0.9 * total else "does NOT fit"
        lines.append(f"  this GPU has {total / GIB:.1f} GiB: {verdict}")
    return "\n".join(lines)
