"""``search --estimate`` of a volumetric search space (``space.spatial_dims=3``), and of any space other than
Auto-DeepLab's (DiNTS, 2D or 3D): memory counted and steps timed on the training patch or crop itself (in 3D
small enough to need no extrapolation; a DiNTS 2D search pays the counted memory once more while counting)."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from autodeeplab.ops.losses import make_loss
from autodeeplab.runs.sampling import batches_per_epoch
from autodeeplab.search.config import SearchConfig
from autodeeplab.search.data import build_search_data
from autodeeplab.search.dispatch_probe import count_search_steps
from autodeeplab.search.estimate import SearchEstimate, _time_forward, _time_steps
from autodeeplab.search.saved_memory import count_saved
from autodeeplab.search.spaces import space_builder


def estimate_volume_search(
    config: SearchConfig,
    device: torch.device,
    measure_time: bool,
    repeats: int,
    echo: Callable[[str], None],
    quiet: bool = False,
) -> SearchEstimate:
    """:func:`estimate_search` for a volumetric space: counted and timed on the training patch itself
    (``data.volumes.patch_size``; small enough in 3D to need no extrapolation), with the data's channels;
    validation as the search does it, one centre patch per volume (``data.val_crop``)."""
    d = config.data
    train, _, val = build_search_data(config, quiet)  # the data must be there: a volume search reads it too
    volumes = config.space.spatial_dims == 3
    classes, channels = train.num_classes, getattr(train, "in_channels", 3)
    patch = tuple(d.volumes.patch_size) if volumes else (d.crop_size, d.crop_size)
    shape = (channels, *patch)
    torch.manual_seed(config.seed)
    model = space_builder(config)(config, classes, channels).to(device)
    echo(f"counting saved activations on {'x'.join(map(str, patch))} {'patches' if volumes else 'crops'} ...")
    x = torch.randn(config.batch_size, *shape, device=device)
    y = torch.randint(0, classes, (config.batch_size, *patch), device=device)
    criterion = make_loss("dice_ce" if volumes else "ce", 255)
    saved = {
        step: sum(r.nbytes for r in count_saved(model, x, y, criterion, step, config.execution.precision))
        for step in ("weight", "arch")
    }
    weights = sum(p.numel() * p.element_size() for p in model.weight_parameters())
    arch = sum(p.numel() * p.element_size() for p in model.arch_parameters())
    estimate = SearchEstimate(
        str(device),
        0,
        config.batch_size,
        saved["weight"],
        saved["arch"],
        3 * weights + 4 * arch,
        epochs=config.epochs,
        sample_shape=tuple(patch),
    )
    estimate.arch_start_epoch = config.arch_start_epoch
    steps = batches_per_epoch((len(train) + 1) // 2, config.batch_size)
    estimate.steps_per_epoch = min(steps, config.steps_per_epoch) if config.steps_per_epoch else steps
    estimate.steps_note = f"{len(train)} {d.dataset} {d.train_split} {'volumes' if volumes else 'images'}"
    if measure_time:
        echo("timing one weight step and one architecture step ...")
        w, a = _time_steps(model, config, device, 0, classes, repeats, shape=shape)
        estimate.weight_step_seconds, estimate.arch_step_seconds = w, a
        echo("counting the operators of a weight step and an architecture step ...")
        estimate.dispatches = count_search_steps(model, config, device, shape, classes)
    count = len(val) if d.max_val_images is None else min(len(val), d.max_val_images)
    if d.val_crop:
        estimate.val_images, estimate.val_pixels = count, math.prod(patch)
        if measure_time:
            echo("timing one validation forward ...")
            estimate.val_image_seconds = _time_forward(
                model, device, 0, config.batch_size, repeats, shape=shape
            )
    return estimate
