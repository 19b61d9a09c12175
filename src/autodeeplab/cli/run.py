"""``autodeeplab run``: the whole pipeline — search, retrain, evaluate, predict — on one dataset."""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

from autodeeplab.config.settings import load_config

SEARCH_PRESET, TRAIN_PRESET = "cpu", "synthetic"
DEFAULTS = {"search_preset": SEARCH_PRESET, "train_preset": TRAIN_PRESET, "eval_split": "test"}


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "run",
        help="search, retrain the found network, evaluate it and show predictions",
        description="The whole pipeline. With no arguments: on the built-in synthetic data, in minutes on a "
        f"laptop CPU (search preset '{SEARCH_PRESET}', training preset '{TRAIN_PRESET}').",
    )
    p.add_argument("--search-set", action="append", default=[], metavar="KEY=VALUE", help="search setting")
    p.add_argument("--train-set", action="append", default=[], metavar="KEY=VALUE", help="training setting")
    p.add_argument("--search-preset", default=SEARCH_PRESET, help=f"search preset (default: {SEARCH_PRESET})")
    p.add_argument("--train-preset", default=TRAIN_PRESET, help=f"training preset (default: {TRAIN_PRESET})")
    p.add_argument("--dataset", help="dataset for all phases (default: synthetic)")
    p.add_argument("--data-root", help="dataset folder")
    p.add_argument("--eval-split", default="test", help="split to evaluate and predict on (default: test)")
    p.add_argument("--output", "-o", metavar="DIR", help="output folder (default: runs/pipeline-<time>)")
    p.add_argument(
        "--resume", metavar="DIR", help="finish an interrupted pipeline in DIR with its own settings"
    )
    p.add_argument("--quiet", "-q", action="store_true", help="no progress display")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from autodeeplab.errors import ConfigError
    from autodeeplab.pipeline import load_pipeline_settings
    from autodeeplab.search.config import SearchConfig
    from autodeeplab.train.config import TrainConfig

    if args.resume:
        given = [f for f in ("search_set", "train_set", "dataset", "data_root", "output") if getattr(args, f)]
        given += [
            f for f in ("search_preset", "train_preset", "eval_split") if getattr(args, f) != DEFAULTS[f]
        ]
        if given:
            flags = "/".join("--" + f.replace("_", "-") for f in given)
            raise ConfigError(f"--resume takes the settings of the pipeline run itself; drop {flags}")
        out = Path(args.resume)
        search_config, train_config, eval_split = load_pipeline_settings(out)
        return _finish(out, search_config, train_config, eval_split, args.quiet, resume=True)
    shared = []
    if args.dataset:
        shared.append(f"data.dataset={args.dataset}")
    if args.data_root:
        shared.append(f"data.root={args.data_root}")
    search_config = _phase_config(SearchConfig, "search", args.search_preset, [*shared, *args.search_set])
    train_config = _phase_config(TrainConfig, "train", args.train_preset, [*shared, *args.train_set])
    out = Path(args.output or Path("runs") / time.strftime("pipeline-%Y%m%d-%H%M%S"))
    return _finish(out, search_config, train_config, args.eval_split, args.quiet, resume=False)


def _phase_config(cls: type, phase: str, preset: str, overrides: list[str]) -> Any:
    """The settings of one phase; an error says which phase, and its hints name that phase's flag
    (``--search-set``, ``--train-set``: ``run`` has no ``--set``)."""
    from autodeeplab.pipeline import phase_settings

    with phase_settings(phase):
        return load_config(cls, preset=preset, overrides=overrides)


def _finish(out: Path, search_config, train_config, eval_split: str, quiet: bool, resume: bool) -> int:
    from autodeeplab.pipeline import run_pipeline
    from autodeeplab.viz.plots import describe_genotype, render_run

    start = time.perf_counter()
    result = run_pipeline(search_config, train_config, out, eval_split=eval_split, quiet=quiet, resume=resume)
    if result.interrupted:
        print(f"pipeline interrupted; finish it with: autodeeplab run --resume {out}")
        return 130
    render_run(out / "search", note=print)
    print(f"\nfound architecture ({out / 'search' / 'genotype.json'}):")
    print(describe_genotype(result.genotype))
    print(f"trained model: {result.model_path}")
    miou = result.metrics["miou"]
    shown = "undefined (no class present)" if miou is None else f"{100 * miou:.2f}%"
    print(f"{eval_split} mIoU {shown}; predictions: {out / 'predictions'}")
    print(f"done in {time.perf_counter() - start:.0f} s; everything is in {out}")
    return 0
