"""``autodeeplab eval`` of a volumetric model: sliding-window Dice and HD95 per volume and per class.

The window is the model's training patch (``--window D H W`` to change it) and its overlap the training's
``data.window_overlap``; ``--flip`` averages the 8 mirrorings along the three axes (nnU-Net's test-time
mirroring); multi-scale inference is for images only and refused here. The JSON holds
the summary, one row per volume (``volumes``) and the resolved settings.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from autodeeplab.errors import ConfigError

DEFAULT_VOLUME_OVERLAP = 0.5
"""The overlap of models trained before it was recorded (the training default)."""


def check_recorded_split(checkpoint: str, info: Any, dataset: Any) -> None:
    """When the model's run folder holds the split its training made (``data_split.json``) and ``dataset``
    is that dataset, refuse a folder whose split has changed since: its test volumes could include
    trained-on ones (a sorted split moves whenever a file is added or removed)."""
    from autodeeplab.cli.evaluate import checkpoint_file
    from autodeeplab.data.splits import SPLIT_RECORD, record_split

    run = checkpoint_file(checkpoint).parent
    if (run / SPLIT_RECORD).exists() and dataset.name == info.dataset:
        record_split(run, dataset)  # checks only: the record exists


def evaluate_volume_split(
    args: argparse.Namespace,
    config: Any,
    model: Any,
    info: Any,
    dataset: Any,
    where: tuple[str, Any, str],
    output: tuple[Path | None, str | None],
    device: Any,
) -> int:
    """Evaluate ``dataset`` (a volume split) with ``model``; print the table, write the JSON; exit code."""
    from autodeeplab import __version__
    from autodeeplab.cli.evaluate import checkpoint_file, training_steps, write_results
    from autodeeplab.config.settings import config_to_dict
    from autodeeplab.fileio import atomic_write_json
    from autodeeplab.infer.evaluate import DEFAULT_WINDOW_OVERLAP, EVAL_JSON_KIND
    from autodeeplab.infer.volumes import evaluate_volumes
    from autodeeplab.runs.progress import Progress

    name, root, split = where
    json_path, skipped = output
    if info.patch_size is None or getattr(dataset, "spatial_dims", 2) != 3:
        raise ConfigError(
            f"--dataset: {name} and the model {args.checkpoint} differ in dimensions (2D vs 3D)"
        )
    if tuple(config.scales) != (1.0,):
        raise ConfigError("--scales: multi-scale inference is for images, not volumes")
    window = tuple(config.window) if config.window is not None else tuple(info.patch_size)
    if len(window) != 3:
        raise ConfigError(f"--window: a volume's window is three sizes D H W, got {list(window)}")
    # The training's overlap, unless --set window_overlap gave another than the images' default.
    overlap = info.window_overlap if info.window_overlap is not None else DEFAULT_VOLUME_OVERLAP
    if config.window_overlap != DEFAULT_WINDOW_OVERLAP:
        overlap = config.window_overlap
    channels = getattr(dataset, "in_channels", 1)
    if channels != model.config.in_channels:
        raise ConfigError(
            f"--dataset: {name} {split} volumes have {channels} channels but {args.checkpoint} takes "
            f"{model.config.in_channels}"
        )
    check_recorded_split(args.checkpoint, info, dataset)
    total = len(dataset) if config.max_images is None else min(len(dataset), config.max_images)
    with Progress(total, f"eval {name} {split}", quiet=args.quiet) as bar:
        result = evaluate_volumes(
            model,
            dataset,
            window,
            overlap,
            device=device,
            max_volumes=total,
            progress=lambda done, n: bar.update(images=1),
            mirror=config.flip,  # volumes: the 8 mirrorings along every axis (nnU-Net's test-time mirroring)
            largest_component=config.largest_component,
        )
    print(
        f"{args.checkpoint}: {name} {split}, {total} volumes, window {'x'.join(map(str, window))}, "
        f"overlap {overlap:g}{', mirrored 8 ways' if config.flip else ''}"
        f"{', largest component per class' if config.largest_component else ''}, {result.seconds:.1f}s"
    )
    print(result.format_table())
    data = {
        "kind": EVAL_JSON_KIND,
        "autodeeplab_version": __version__,
        "checkpoint": str(checkpoint_file(args.checkpoint).resolve()),
        **training_steps(info),
        "dataset": name,
        "data_root": str(Path(root).resolve()) if root else None,
        "split": split,
        "window": list(window),
        "window_overlap": overlap,
        "mirror": bool(config.flip),
        "largest_component": bool(config.largest_component),
        **result.to_dict(),
        "config": config_to_dict(config),
    }
    return write_results(args, json_path, skipped, lambda path: atomic_write_json(path, data))
