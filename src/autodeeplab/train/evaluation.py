"""Scoring the evaluation split while training (``eval_every`` and at the end), written to ``metrics.jsonl``.

With several ranks each scores its share of the samples (every ``world``-th) and the counts are summed or
the per-volume rows gathered, so the metrics equal one process's (``evaluate``,
``evaluate_volumes``); only rank 0 writes them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from autodeeplab.data.volume_checks import is_volume_dataset
from autodeeplab.infer.evaluate import evaluate
from autodeeplab.runs import distributed
from autodeeplab.runs.rundir import RunDir
from autodeeplab.train.config import TrainConfig


def evaluate_during_training(
    model: nn.Module,
    val: Any,
    config: TrainConfig,
    run: RunDir,
    step: int,
    device: torch.device,
    echo: Callable[[str], None],
    ranks: distributed.RankInfo,
) -> dict[str, Any]:
    """Score the first ``n`` evaluation samples; with several ranks each scores its share and the counts
    are summed (the same metrics as one process)."""
    n = len(val) if config.data.eval_max_images is None else min(len(val), config.data.eval_max_images)
    if is_volume_dataset(val):
        return _volumes(model, val, config, run, step, device, echo, n, ranks)
    samples = (val[i] for i in distributed.shard_indices(n, ranks.rank, ranks.world))
    result = evaluate(
        model, samples, val.num_classes, val.class_names, val.ignore_index, device=device, world=ranks.world
    )
    m = result.metrics
    run.append_jsonl(
        "metrics.jsonl",
        {
            "step": step,
            "split": config.data.eval_split,
            "images": n,
            "miou": m.miou,
            "pixel_accuracy": m.pixel_accuracy,
        },
    )
    split = config.data.eval_split
    echo(
        f"step {step}: {split} mIoU {100 * m.miou:.2f}%  pixel acc {100 * m.pixel_accuracy:.2f}% ({n} images)"
    )
    return {"split": config.data.eval_split, "images": n, **m.to_dict()}


def _volumes(model, val, config: TrainConfig, run: RunDir, step: int, device, echo, n: int, ranks):
    """Sliding-window Dice (and HD95) of the first ``n`` volumes of ``val``; restores train mode."""
    from autodeeplab.infer.volumes import evaluate_volumes

    d = config.data
    v = d.volumes
    result = evaluate_volumes(
        model,
        val,
        v.patch_size,
        v.window_overlap,
        device=device,
        max_volumes=n,
        world=ranks.world,
        rank=ranks.rank,
    )
    model.train()
    record = {"step": step, "split": d.eval_split, "volumes": n, "mean_dice": result.mean_dice}
    summary = {k: v for k, v in result.to_dict().items() if k != "volumes"}  # rows stay in eval's JSON
    run.append_jsonl("metrics.jsonl", {**record, "dice": summary["per_class_dice"]})
    echo(f"step {step}: {d.eval_split} mean Dice {result.mean_dice:.4f} ({n} volumes)")
    return {"split": d.eval_split, **summary}
