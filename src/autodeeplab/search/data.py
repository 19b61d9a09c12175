"""The search's data: trainA/trainB views of the training split and the validation split, and the
validation score of the supernet after each epoch (mIoU of images, mean Dice of volumes)."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Subset

from autodeeplab.data.checks import files_to_read, refuse_broken_files, refuse_hidden_class
from autodeeplab.data.registry import build_dataset
from autodeeplab.data.transforms import CentreCropTransform, EvalTransform, TrainTransform, check_crop_size
from autodeeplab.data.volume_checks import is_volume_dataset
from autodeeplab.data.volume_transforms import CentrePatchTransform, PatchTransform
from autodeeplab.data.volumes import VOLUME_DATASETS
from autodeeplab.errors import ConfigError, DataError
from autodeeplab.infer.evaluate import evaluate
from autodeeplab.runs.progress import READ_BAR_DELAY_S, Progress
from autodeeplab.search.config import SearchConfig

VALIDATION_BAR_DELAY_S = 3.0
"""A validation shorter than this shows no bar."""


def build_search_data(config: SearchConfig, quiet: bool = False):
    """trainA and trainB views (each with its own epoch counter for augmentation) and the val split.

    Images are cropped (``data.crop_size``); volumes are sampled as patches (``data.volumes``) and validated
    whole, by sliding window. Files are read once first (:func:`~autodeeplab.data.checks.refuse_broken_files`;
    a bar unless ``quiet``).
    """
    d = config.data
    volumes = d.dataset in VOLUME_DATASETS
    if volumes:
        train_transform: Any = PatchTransform(d.volumes.patch_size, d.volumes.foreground_prob, flip=d.flip)
    else:
        train_transform = TrainTransform(d.crop_size, scale_range=d.scale_range, flip=d.flip)

    def open_split(split: str, transform, synthetic_samples: int):
        options: dict[str, Any] = {"seed": config.seed}
        if d.dataset == "synthetic":
            options.update(num_samples=synthetic_samples, size=d.synthetic_size)
        if d.dataset == "folder":
            options.update(split_fractions=d.split_fractions, split_seed=d.split_seed)
        if volumes:
            options.update(d.volumes.dataset_options(d.split_fractions, d.split_seed))
        return build_dataset(d.dataset, d.root, split, transform=transform, **options)

    train_a = open_split(d.train_split, train_transform, d.synthetic_train_samples)
    check_dimensions(config, train_a)
    if not volumes:
        check_crop_size(d.crop_size, train_a.image_size, d.scale_range[1])
        refuse_hidden_class(train_a)  # 0/255 masks read with ignore 255 would lose their foreground
    train_b = open_split(d.train_split, train_transform, d.synthetic_train_samples)
    if volumes:  # the centre patch of each volume (data.val_crop), or whole volumes by sliding window
        val_transform: Any = CentrePatchTransform(d.volumes.patch_size) if d.val_crop else None
    else:
        val_transform = CentreCropTransform(d.crop_size) if d.val_crop else EvalTransform()
    val = open_split(d.val_split, val_transform, d.synthetic_val_samples)
    # volumes: every pair, not first met at step N; images: those the first validation will read, now
    # rather than after the first epoch
    for split, count in ([(train_a, None)] if volumes else []) + [(val, d.max_val_images)]:
        with Progress(*files_to_read(split, count), quiet=quiet, delay_s=READ_BAR_DELAY_S) as bar:
            refuse_broken_files(split, count, bar.update)
    if len(train_a) < 2 * config.batch_size:
        raise DataError(
            f"{d.dataset} {d.train_split}: {len(train_a)} images cannot fill one batch of "
            f"{config.batch_size} in each of trainA and trainB"
        )
    return train_a, train_b, val


def check_dimensions(config: SearchConfig, data: Any) -> None:
    """``space.spatial_dims`` must be the data's (2 for images, 3 for volumes)."""
    dims = getattr(data, "spatial_dims", 2)
    if config.space.spatial_dims != dims:
        kinds = {2: "images", 3: "volumes"}
        raise ConfigError(
            f"space.spatial_dims: {config.space.spatial_dims} ({kinds[config.space.spatial_dims]}) but "
            f"{config.data.dataset} {data.split} holds {kinds[dims]}; use --set space.spatial_dims={dims}"
            + (" or --preset hippocampus" if dims == 3 else "")
        )


def validation_score(
    model: nn.Module, val, config: SearchConfig, device: torch.device, quiet: bool = False
) -> dict[str, float]:
    """``{"val_miou": …}`` for images, ``{"val_dice": …}`` (mean foreground Dice) for volumes, over the
    first ``data.max_val_images`` samples of ``val`` (all: None).

    Volumes are scored on their centre patches in batches when ``data.val_crop`` (the default: Dice pooled
    over all their voxels, per class, then averaged over the foreground classes), else whole by sliding
    window (the mean of the volumes' Dice, as ``eval`` reports).
    """
    count = len(val) if config.data.max_val_images is None else min(len(val), config.data.max_val_images)
    if not is_volume_dataset(val):
        return {"val_miou": validation_miou(model, val, config, device, quiet)}
    from autodeeplab.infer.volume_metrics import dice_per_class
    from autodeeplab.infer.volumes import evaluate_volumes

    if config.data.val_crop:
        batches = DataLoader(Subset(val, range(count)), batch_size=config.batch_size, shuffle=False)
        predicted, truth = [], []
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad():
                for images, masks in batches:
                    predicted.append(model(images.to(device)).argmax(dim=1).cpu())
                    truth.append(masks)
        finally:
            model.train(was_training)
        # The patches stacked along the first axis: one [N·D, H, W] volume, Dice pooled over all voxels.
        pred, target = (torch.cat(t).flatten(0, 1) for t in (predicted, truth))
        dice = dice_per_class(pred, target, val.num_classes, val.ignore_index)
        foreground = [d for d in dice[1:] if d == d]  # NaN: a class in neither
        return {"val_dice": sum(foreground) / len(foreground) if foreground else float("nan")}

    v = config.data.volumes
    with Progress(count, "validation", quiet=quiet, delay_s=VALIDATION_BAR_DELAY_S) as bar:
        result = evaluate_volumes(
            model,
            val,
            v.patch_size,
            v.window_overlap,
            device=device,
            max_volumes=count,
            progress=lambda done, n: bar.update(1, images=1),
            with_hd95=False,
        )
    return {"val_dice": float(result.mean_dice)}


def validation_miou(
    model: nn.Module, val, config: SearchConfig, device: torch.device, quiet: bool = False
) -> float:
    """mIoU of the supernet on the first ``data.max_val_images`` images of ``val`` (all: None); a bar
    appears when it takes more than a few seconds. Centre crops (``data.val_crop``) share one size, so they
    go through in batches of ``batch_size``: the supernet's time per forward is mostly per operation, not
    per pixel, on a CPU."""
    count = len(val) if config.data.max_val_images is None else min(len(val), config.data.max_val_images)
    samples = val
    if config.data.val_crop:
        samples = DataLoader(Subset(val, range(count)), batch_size=config.batch_size, shuffle=False)
    with Progress(count, "validation", quiet=quiet, delay_s=VALIDATION_BAR_DELAY_S) as bar:
        result = evaluate(
            model,
            samples,
            val.num_classes,
            val.class_names,
            val.ignore_index,
            device=device,
            max_images=count,
            progress=lambda done: bar.update(done - bar.n, images=done - bar.n),
        )
    return float(result.metrics.miou)
