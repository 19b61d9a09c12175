"""The whole Auto-DeepLab pipeline in one call: search → retrain the found network → evaluate → predict.

Each phase writes its own run directory under the pipeline's folder::

    OUT/search/      the search run (genotype.json, arch_params.json, plots/, ...)
    OUT/train/       the retraining run (model.pt and its checkpoints)
    OUT/eval.json    metrics of the trained model on the evaluation split (written last: `run --resume`
                     of a finished pipeline only reports it)
    OUT/predictions/ for a few samples: sampleNNN_label.png (palette PNG of the predicted classes),
                     sampleNNN_overlay.png and sampleNNN_panel.png (image | truth | prediction)

Every setting, split name and crop size the phases will use is checked before the search starts
(:func:`check_pipeline_inputs`), so a typo fails in a second with one line instead of after the search and
the training, and nothing is written.
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from autodeeplab.config.settings import dump_config_yaml, load_config, read_run_info
from autodeeplab.data.registry import build_dataset, check_split
from autodeeplab.data.transforms import EvalTransform
from autodeeplab.data.volumes import VOLUME_DATASETS
from autodeeplab.errors import ConfigError
from autodeeplab.fileio import atomic_write_bytes, loads_json
from autodeeplab.infer.evaluate import EvalConfig, evaluate, is_eval_json, write_eval_json
from autodeeplab.infer.predict import (
    DEFAULT_OVERLAY_ALPHA,
    label_image,
    overlay,
    predicted_samples,
    prediction_panel,
)
from autodeeplab.nets.model_file import load_model
from autodeeplab.outputs import png_bytes
from autodeeplab.search.config import SearchConfig
from autodeeplab.search.data import build_search_data
from autodeeplab.search.loop import run_search
from autodeeplab.space.autodeeplab.genotype import Genotype
from autodeeplab.train.config import TrainConfig
from autodeeplab.train.loop import build_train_data, run_training, train_dataset_options

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
    resume: bool = False,
) -> PipelineResult:
    """Search with ``search_config``, retrain the result with ``train_config``, evaluate and predict.

    Bad settings, split names, crop sizes or dataset layouts raise before anything is written (see
    :func:`check_pipeline_inputs`).
    """
    check_pipeline_inputs(search_config, train_config, eval_split, quiet)
    out = Path(out_dir)
    if not resume:
        if out.exists() and (not out.is_dir() or any(out.iterdir())):
            what = "is not empty" if out.is_dir() else "is a file"
            raise ConfigError(f"output folder {out} {what}; give a new folder for the pipeline's runs")
        out.mkdir(parents=True, exist_ok=True)
        # Both phases' settings first, so that `run --resume` can finish whatever phase was reached.
        dump_config_yaml(search_config, out / SEARCH_SETTINGS)
        dump_config_yaml(train_config, out / TRAIN_SETTINGS, {"eval_split": eval_split})
    echo("== 1/4 search ==")
    finish = f"autodeeplab run --resume {out}"
    found = run_search(
        search_config,
        out / "search",
        resume=resume and _started(out / "search"),
        quiet=quiet,
        echo=echo,
        continue_with=finish,
    )
    if found.interrupted:
        return PipelineResult(out, found.genotype, Path(), {}, [], interrupted=True)
    echo(f"found: {found.genotype.short()}")

    echo("== 2/4 retrain the found network from scratch ==")
    trained = run_training(
        train_config,
        found.genotype,
        out / "train",
        resume=resume and _started(out / "train"),
        quiet=quiet,
        echo=echo,
        continue_with=finish,
    )
    if trained.interrupted:
        return PipelineResult(out, found.genotype, trained.model_path, {}, [], interrupted=True)

    done = _finished_evaluation(out, trained.model_path, eval_split) if resume else None
    if done is not None:
        metrics, pictures = done
        echo(f"== 3/4 and 4/4 done already: {out / EVAL_JSON} and {out / 'predictions'} ==")
        return PipelineResult(out, found.genotype, trained.model_path, metrics, pictures)

    echo(f"== 3/4 evaluate on the {eval_split} split ==")
    model, info = load_model(trained.model_path)
    dataset = build_dataset(info.dataset, info.data_root, eval_split, EvalTransform(), **info.dataset_options)
    result = evaluate(model, dataset, dataset.num_classes, dataset.class_names, dataset.ignore_index)
    result.extra = {"checkpoint": str(trained.model_path), "dataset": info.dataset, "split": eval_split}
    result.extra["checkpoint_sha256"] = file_sha256(trained.model_path)
    echo(result.metrics.format_table())

    echo("== 4/4 predictions ==")
    pictures = write_predictions(model, dataset, out / "predictions", num_predictions)
    echo(f"{len(pictures)} prediction panels in {out / 'predictions'}")
    # Written last, so that its presence says the pipeline finished (what `run --resume` looks for).
    result.extra["predictions"] = [p.name for p in pictures]
    eval_config = EvalConfig(split=eval_split, dataset=info.dataset, data_root=info.data_root or None)
    write_eval_json(out / EVAL_JSON, result, eval_config)
    return PipelineResult(out, found.genotype, trained.model_path, result.metrics.to_dict(), pictures)


EVAL_JSON = "eval.json"


def file_sha256(path: Path) -> str:
    """The SHA-256 of a file's bytes, read in 1 MiB pieces."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for piece in iter(lambda: f.read(1 << 20), b""):
            digest.update(piece)
    return digest.hexdigest()


def _finished_evaluation(
    out: Path, model_path: Path, eval_split: str
) -> tuple[dict[str, Any], list[Path]] | None:
    """``(metrics, prediction panels)`` of a pipeline that finished already: its eval JSON (written after
    the predictions) is ours, of this model (its bytes' SHA-256: a retrained ``model.pt`` keeps its path)
    and split, and every panel it lists is there; else None (the evaluation and predictions run again,
    replacing what an interrupted run left)."""
    path = out / EVAL_JSON
    if not is_eval_json(path):
        return None
    data = loads_json(path.read_text(encoding="utf-8"))
    if data.get("checkpoint_sha256") != file_sha256(model_path) or data.get("split") != eval_split:
        return None
    panels = data.get("predictions")
    if not isinstance(panels, list) or not all(isinstance(p, str) for p in panels):
        return None
    pictures = [out / "predictions" / name for name in panels]
    if not all(p.is_file() for p in pictures) or "miou" not in data:
        return None
    return data, pictures


SEARCH_SETTINGS, TRAIN_SETTINGS = "search_settings.yaml", "train_settings.yaml"
"""The pipeline's settings, written before its first phase (what ``autodeeplab run --resume`` reads)."""


def _started(phase_dir: Path) -> bool:
    """Whether a phase wrote anything: it resumes (from its newest checkpoint, or from the beginning when it
    was killed before its first); else it starts (a phase that failed before its first checkpoint removed
    its folder)."""
    return phase_dir.is_dir() and any(phase_dir.iterdir())


def load_pipeline_settings(out_dir: str | Path) -> tuple[SearchConfig, TrainConfig, str]:
    """``(search settings, training settings, eval split)`` of the pipeline run in ``out_dir``."""
    out = Path(out_dir)
    for name in (SEARCH_SETTINGS, TRAIN_SETTINGS):
        if not (out / name).is_file():
            raise ConfigError(
                f"{out}: not a pipeline run of 'autodeeplab run' (no {name}); nothing to resume"
            )
    search = load_config(SearchConfig, yaml_path=out / SEARCH_SETTINGS)
    train = load_config(TrainConfig, yaml_path=out / TRAIN_SETTINGS)
    eval_split = read_run_info(out / TRAIN_SETTINGS).get("eval_split", "test")
    return search, train, str(eval_split)


@contextlib.contextmanager
def phase_settings(phase: str) -> Iterator[None]:
    """A settings error inside says which phase it is of, and its hints name that phase's flag
    (``--search-set``, ``--train-set``: ``run`` has no ``--set``)."""
    try:
        yield
    except ConfigError as exc:
        message = str(exc).replace("--set ", f"--{phase}-set ")
        raise ConfigError(f"{phase} settings: {message}") from None


def check_pipeline_inputs(
    search_config: SearchConfig, train_config: TrainConfig, eval_split: str, quiet: bool = False
) -> None:
    """Refuse, before anything runs or is written, what would otherwise fail after search and training.

    In order: the search settings; every split name the phases use (against the splits the dataset offers,
    naming the setting: ``search data.val_split``, ``train data.eval_split``, ``eval_split``...); then each
    split is listed as its phase will list it (wrong layouts, missing files, too few images for a batch),
    the crop sizes are checked against the image sizes at the largest random scale, and the images each
    phase validates on are read once (:func:`autodeeplab.data.checks.refuse_broken_files`; a bar when that
    takes more than a few seconds, unless ``quiet``). Broken training images are still met lazily, with the
    same one-line messages as ``data check``.
    """
    search_config.validate()
    s, t = search_config.data, train_config.data
    if s.dataset in VOLUME_DATASETS or t.dataset in VOLUME_DATASETS:
        raise ConfigError(
            "--dataset: autodeeplab run is for images for now; for volumes run search, train and eval one "
            "after another (README, Volumes)"
        )
    requests = [
        ("search data.train_split", s.dataset, s.root, s.train_split),
        ("search data.val_split", s.dataset, s.root, s.val_split),
        ("train data.train_split", t.dataset, t.root, t.train_split),
        ("train data.eval_split", t.dataset, t.root, t.eval_split),
        ("eval_split", t.dataset, t.root, eval_split),  # evaluation uses the training data
    ]
    for field, name, root, split in requests:
        if split is not None:  # train data.eval_split may be None: no evaluation during training
            check_split(name, root, split, field)
    with phase_settings("search"):  # each lists its splits and checks its crop size
        build_search_data(search_config, quiet)
    with phase_settings("train"):
        build_train_data(train_config, quiet)
    build_dataset(t.dataset, t.root, eval_split, EvalTransform(), **train_dataset_options(train_config))


def write_predictions(model: torch.nn.Module, dataset: Any, out_dir: Path, count: int) -> list[Path]:
    """For the first ``count`` samples: a palette label PNG, an overlay, an image | truth | prediction panel.

    The label PNG (:func:`autodeeplab.infer.predict.label_image`, as ``autodeeplab predict`` writes) holds the
    predicted class indices with the dataset's palette. Returns the panels' paths.
    """
    written = []
    for index, (image, truth, labels) in enumerate(predicted_samples(model, dataset, count)):
        panel = prediction_panel(image, truth, labels, dataset)
        zoom = max(1, PANEL_MIN_HEIGHT // panel.shape[0])  # small images: enlarge so a person can see them
        panel = panel.repeat(zoom, axis=0).repeat(zoom, axis=1)
        name = f"sample{index:03d}"
        atomic_write_bytes(out_dir / f"{name}_label.png", _png(label_image(labels, dataset.palette)))
        blended = overlay(image, labels, dataset.palette, DEFAULT_OVERLAY_ALPHA)
        atomic_write_bytes(out_dir / f"{name}_overlay.png", _png(Image.fromarray(blended)))
        atomic_write_bytes(out_dir / f"{name}_panel.png", _png(Image.fromarray(panel)))
        written.append(out_dir / f"{name}_panel.png")
    return written


def _png(image: Image.Image) -> bytes:
    return png_bytes(image)
