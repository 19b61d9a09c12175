"""The whole Auto-DeepLab pipeline in one call: search → retrain the found network → evaluate → predict.

Each phase writes its own run directory under the pipeline's folder::

    OUT/search/      the search run (genotype.json, arch_params.json, plots/, ...)
    OUT/train/       the retraining run (model.pt and its checkpoints)
    OUT/eval.json    metrics of the trained model on the evaluation split
    OUT/predictions/ label PNGs, overlays and image | truth | prediction panels for a few samples
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from .data import EvalTransform, build_dataset
from .evaluate import evaluate
from .fileio import atomic_write_bytes, atomic_write_json
from .genotype import Genotype
from .predict import DEFAULT_OVERLAY_ALPHA, prediction_panels
from .search import run_search
from .search_config import SearchConfig
from .train import TrainConfig, run_training
from .trained import load_trained

PANEL_MIN_HEIGHT = 256


@dataclass
class PipelineResult:
    out_dir: Path
    genotype: Genotype
    model_path: Path
    metrics: dict[str, Any]
    predictions: list[Path]
    interrupted: bool = False


def run_pipeline(
    search_config: SearchConfig,
    train_config: TrainConfig,
    out_dir: str | Path,
    eval_split: str = "test",
    num_predictions: int = 4,
    quiet: bool = False,
    echo: Callable[[str], None] = print,
) -> PipelineResult:
    """Search with ``search_config``, retrain the result with ``train_config``, evaluate and predict."""
    out = Path(out_dir)
    echo("== 1/4 search ==")
    found = run_search(search_config, out / "search", quiet=quiet, echo=echo)
    if found.interrupted:
        return PipelineResult(out, found.genotype, Path(), {}, [], interrupted=True)
    echo(f"found: {found.genotype.short()}")

    echo("== 2/4 retrain the found network from scratch ==")
    trained = run_training(train_config, found.genotype, out / "train", quiet=quiet, echo=echo)
    if trained.interrupted:
        return PipelineResult(out, found.genotype, trained.model_path, {}, [], interrupted=True)

    echo(f"== 3/4 evaluate on the {eval_split} split ==")
    model, info = load_trained(trained.model_path)
    dataset = build_dataset(info.dataset, info.data_root, eval_split, EvalTransform(), **info.dataset_options)
    result = evaluate(model, dataset, dataset.num_classes, dataset.class_names, dataset.ignore_index)
    result.extra = {"checkpoint": str(trained.model_path), "dataset": info.dataset, "split": eval_split}
    atomic_write_json(out / "eval.json", result.to_dict())
    echo(result.metrics.format_table())

    echo("== 4/4 predictions ==")
    pictures = write_predictions(model, dataset, out / "predictions", num_predictions)
    echo(f"{len(pictures)} prediction panels in {out / 'predictions'}")
    return PipelineResult(out, found.genotype, trained.model_path, result.metrics.to_dict(), pictures)


def write_predictions(model: torch.nn.Module, dataset: Any, out_dir: Path, count: int) -> list[Path]:
    """For the first ``count`` samples: an image | truth | prediction panel and an overlay PNG."""
    written = []
    for index, panel in enumerate(prediction_panels(model, dataset, count)):
        image, _ = dataset.load_raw(index)
        colours = panel[:, 2 * image.shape[1] :].astype(np.float32)  # the prediction, coloured
        zoom = max(1, PANEL_MIN_HEIGHT // panel.shape[0])  # small images: enlarge so a person can see them
        panel = panel.repeat(zoom, axis=0).repeat(zoom, axis=1)
        blended = (1 - DEFAULT_OVERLAY_ALPHA) * image.astype(np.float32) + DEFAULT_OVERLAY_ALPHA * colours
        atomic_write_bytes(out_dir / f"sample{index:03d}_panel.png", _png(panel))
        atomic_write_bytes(out_dir / f"sample{index:03d}_overlay.png", _png(blended))
        written.append(out_dir / f"sample{index:03d}_panel.png")
    return written


def _png(array: np.ndarray) -> bytes:
    import io

    buffer = io.BytesIO()
    Image.fromarray(array.astype(np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()
