"""``autodeeplab train``: retrain a found architecture from scratch (paper §5.2) and report its mIoU."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from ..config import load_config, preset_names
from ..errors import ConfigError

DEFAULT_PRESET = "cpu"


def register(sub: argparse._SubParsersAction) -> None:
    from ..train import TrainConfig

    p = sub.add_parser(
        "train",
        help="train a found network from scratch (Auto-DeepLab §5.2)",
        description="Train the network of a genotype from scratch. Writes a run directory whose model.pt "
        "is all that 'eval', 'predict' and 'export' need. The default preset "
        f"'{DEFAULT_PRESET}' trains a small model on CamVid in minutes on a CPU; 'paper' is the paper's "
        "Cityscapes recipe; 'tiny' uses the built-in synthetic data.",
    )
    p.add_argument(
        "--genotype",
        metavar="paper|FILE|RUN_DIR",
        help="architecture: 'paper', a genotype.json, or a search run directory (required unless --resume)",
    )
    p.add_argument(
        "--preset", choices=preset_names(TrainConfig), help=f"named settings (default: {DEFAULT_PRESET})"
    )
    p.add_argument("--config", metavar="FILE.yaml", help="YAML settings applied over the preset")
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override one setting, e.g. --set iterations=500 --set model.filter_multiplier=20",
    )
    p.add_argument("--dataset", help="dataset name (synthetic, camvid, cityscapes, voc, ade20k, folder)")
    p.add_argument("--data-root", help="dataset folder")
    p.add_argument("--output", "-o", metavar="RUN_DIR", help="run directory (default: runs/train-<time>)")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue an interrupted run from its last checkpoint")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress display")
    p.set_defaults(func=run)


def resolve_config(args: argparse.Namespace):  # -> TrainConfig (imported lazily: torch is slow to load)
    from ..train import TrainConfig

    overrides = list(args.overrides)
    if args.dataset:
        overrides.append(f"data.dataset={args.dataset}")
        if not args.data_root:
            overrides.append("data.root=null")  # a preset's root belongs to the preset's dataset
    if args.data_root:
        overrides.append(f"data.root={args.data_root}")
    if args.resume:
        if args.preset or args.config or args.genotype:
            raise ConfigError(
                "--resume takes the settings of the run itself; drop --preset/--config/--genotype"
            )
        config_file = Path(args.resume) / "config.yaml"
        if not config_file.exists():
            raise ConfigError(f"{args.resume}: not a training run directory (no config.yaml)")
        return load_config(TrainConfig, yaml_path=config_file, overrides=overrides)
    return load_config(
        TrainConfig, preset=args.preset or DEFAULT_PRESET, yaml_path=args.config, overrides=overrides
    )


def run(args: argparse.Namespace) -> int:
    from ..genotype import resolve_genotype
    from ..metrics import metrics_from_confusion
    from ..train import run_training

    if not args.resume and not args.genotype:
        raise ConfigError("--genotype: required (paper, a genotype.json, or a search run directory)")
    config = resolve_config(args)
    genotype = resolve_genotype(Path(args.resume) / "genotype.json" if args.resume else args.genotype)
    run_dir = Path(args.resume or args.output or Path("runs") / time.strftime("train-%Y%m%d-%H%M%S"))
    result = run_training(config, genotype, run_dir, resume=bool(args.resume), quiet=args.quiet)
    if result.interrupted:
        return 130
    print(f"\ntrained model: {result.model_path} ({result.step} steps, {result.seconds:.0f}s)")
    if result.metrics is not None:
        import torch

        m = metrics_from_confusion(torch.tensor(result.metrics["confusion"]), result.metrics["class_names"])
        print(f"{result.metrics['split']} split, {result.metrics['images']} images, single scale:")
        print(m.format_table())
    print(f"evaluate with: autodeeplab eval {result.model_path} --split test")
    return 0
