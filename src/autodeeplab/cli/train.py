"""``autodeeplab train``: retrain a found architecture from scratch (paper §5.2) and report its mIoU."""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from autodeeplab.cli.common import add_run_arguments, resolve_run_config
from autodeeplab.errors import ConfigError

DEFAULT_PRESET = "cpu"


def searched_epochs(spec: str) -> tuple[int, int] | None:
    """(epochs finished, epochs planned) of the search run that ``spec`` names (its folder, or an architecture
    file in it), from its ``metrics.jsonl`` and ``config.yaml``; None for anything else or what cannot be
    read (the architecture itself was read and checked already)."""
    from autodeeplab.config.settings import read_settings_yaml
    from autodeeplab.errors import AutoDeepLabError
    from autodeeplab.runs.rundir import read_jsonl
    from autodeeplab.space.autodeeplab.genotype import BUILTIN

    if spec in BUILTIN:  # a name, not a path: the current folder is no run of it
        return None
    path = Path(spec)
    folder = path if path.is_dir() else path.parent
    try:
        planned = read_settings_yaml(folder / "config.yaml").get("epochs")
        rows = read_jsonl(folder / "metrics.jsonl")
    except (OSError, AutoDeepLabError):
        return None
    done = [r.get("epoch") for r in rows if isinstance(r, dict) and r.get("phase") == "search"]
    done = [e for e in done if isinstance(e, int)]
    if not isinstance(planned, int) or not done:
        return None
    return max(done), planned


def note_unfinished_search(spec: str) -> None:
    """A one-line note on stderr when the architecture comes from a search that stopped before its last
    epoch: it is that epoch's decoding, not the search's result (``search --resume`` finishes it)."""
    if os.environ.get("RANK", "0") != "0":
        return  # rank 0 says it
    epochs = searched_epochs(spec)
    if epochs is not None and epochs[0] < epochs[1]:
        print(
            f"note: {spec}: from a search stopped after epoch {epochs[0]} of {epochs[1]}; its architecture"
            " is that epoch's decoding (autodeeplab search --resume finishes the search)",
            file=sys.stderr,
        )


def register(sub: argparse._SubParsersAction) -> None:
    from autodeeplab.train.config import TrainConfig

    p = sub.add_parser(
        "train",
        help="train a found network from scratch (Auto-DeepLab §5.2)",
        description="Train the network of a genotype (or a DiNTS dints_arch.json) from scratch. Writes a run "
        "directory whose model.pt is all that 'eval', 'predict' and 'export' need. The default preset "
        f"'{DEFAULT_PRESET}' trains a small model on CamVid in minutes on a CPU; 'paper' is the paper's "
        "Cityscapes recipe; 'synthetic' (what 'autodeeplab run' uses, minutes) and 'tiny' (seconds) use the "
        "built-in synthetic data. Every setting of the network is a "
        "'model.' key (filter_multiplier, stem_channels, aspp_channels, aspp_rates_os16, aspp_dropout, "
        "decoder_channels, low_level_channels, drop_path_keep_prob, num_classes); a DiNTS network's widths "
        "and norm are 'dints.channels' and 'dints.norm'.",
    )
    p.add_argument(
        "--arch",
        "--genotype",
        dest="genotype",
        metavar="paper|FILE|RUN_DIR",
        help="architecture: 'paper', a genotype.json or dints_arch.json, or a search run directory "
        "(required unless --resume)",
    )
    add_run_arguments(p, TrainConfig, DEFAULT_PRESET, "--set iterations=500 --set model.filter_multiplier=20")
    p.set_defaults(func=run)


def resolve_config(args: argparse.Namespace):  # -> TrainConfig (imported lazily: torch is slow to load)
    from autodeeplab.train.config import TrainConfig

    return resolve_run_config(args, TrainConfig, DEFAULT_PRESET, "training", exclusive=("genotype",))


def run(args: argparse.Namespace) -> int:
    from autodeeplab.infer.metrics import metrics_from_confusion
    from autodeeplab.space.architectures import resolve_architecture
    from autodeeplab.train.loop import run_training

    if not args.resume and not args.genotype:
        raise ConfigError(
            "--arch: required (paper, a genotype.json or dints_arch.json, or a search run directory)"
        )
    config = resolve_config(args)
    genotype = resolve_architecture(args.resume or args.genotype)
    if not args.resume:
        note_unfinished_search(args.genotype)
    op_set = getattr(genotype, "op_set", None)
    if op_set is not None and not op_set.endswith(f"-{config.model.spatial_dims}d"):
        raise ConfigError(
            f"{args.resume or args.genotype}: a DiNTS architecture of op set {op_set}, but "
            f"model.spatial_dims is {config.model.spatial_dims} (set it to {op_set[-2]})"
        )
    run_dir = Path(args.resume or args.output or Path("runs") / time.strftime("train-%Y%m%d-%H%M%S"))
    result = run_training(config, genotype, run_dir, resume=bool(args.resume), quiet=args.quiet)
    if result.interrupted:
        return 130
    if os.environ.get("RANK", "0") != "0":
        return 0  # rank 0 reports
    print(f"\ntrained model: {result.model_path} ({result.step} steps, {result.seconds:.0f}s)")
    if result.metrics is not None and "mean_dice" in result.metrics:  # volumes
        m = result.metrics
        dice = ", ".join(f"{name} {_pct(v)}" for name, v in m["per_class_dice"].items())
        print(
            f"{m['split']} split, {m['num_volumes']} volumes, sliding window: "
            f"mean Dice {_pct(m['mean_dice'])}"
        )
        print(f"Dice per class: {dice}")
    elif result.metrics is not None:
        import torch

        m = metrics_from_confusion(torch.tensor(result.metrics["confusion"]), result.metrics["class_names"])
        print(f"{result.metrics['split']} split, {result.metrics['images']} images, single scale:")
        print(m.format_table())
    print(f"evaluate with: autodeeplab eval {result.model_path} --split test")
    return 0


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.2f}%"
