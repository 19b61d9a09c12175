"""``autodeeplab search``: run (or resume) an architecture search and print what it found."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from ..config import load_config, preset_names
from ..errors import ConfigError
from ..search_config import SearchConfig

DEFAULT_PRESET = "cpu"


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "search",
        help="search a cell and a network path (Auto-DeepLab §4)",
        description="Search an architecture. With no arguments: a short search on the built-in synthetic "
        f"data (preset '{DEFAULT_PRESET}'); '--preset paper' gives the paper's setting.",
    )
    p.add_argument(
        "--preset", choices=preset_names(SearchConfig), help=f"named settings (default: {DEFAULT_PRESET})"
    )
    p.add_argument("--config", metavar="FILE.yaml", help="YAML settings applied over the preset")
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override one setting, e.g. --set epochs=10 --set space.filter_multiplier=8",
    )
    p.add_argument("--dataset", help="dataset name (synthetic, camvid, cityscapes, voc, ade20k, folder)")
    p.add_argument("--data-root", help="dataset folder")
    p.add_argument("--output", "-o", metavar="RUN_DIR", help="run directory (default: runs/search-<time>)")
    p.add_argument(
        "--resume", metavar="RUN_DIR", help="continue an interrupted search from its last checkpoint"
    )
    p.add_argument("--quiet", "-q", action="store_true", help="no progress display")
    p.set_defaults(func=run)


def resolve_config(args: argparse.Namespace) -> SearchConfig:
    overrides = list(args.overrides)
    if args.dataset:
        overrides.append(f"data.dataset={args.dataset}")
    if args.data_root:
        overrides.append(f"data.root={args.data_root}")
    if args.resume:
        if args.preset or args.config:
            raise ConfigError("--resume takes the settings of the run itself; drop --preset/--config")
        config_file = Path(args.resume) / "config.yaml"
        if not config_file.exists():
            raise ConfigError(f"{args.resume}: not a search run directory (no config.yaml)")
        return load_config(SearchConfig, yaml_path=config_file, overrides=overrides)
    return load_config(
        SearchConfig, preset=args.preset or DEFAULT_PRESET, yaml_path=args.config, overrides=overrides
    )


def run(args: argparse.Namespace) -> int:
    from ..plots import describe_genotype, render_run
    from ..search import run_search

    config = resolve_config(args)
    run_dir = Path(args.resume or args.output or Path("runs") / time.strftime("search-%Y%m%d-%H%M%S"))
    result = run_search(config, run_dir, resume=bool(args.resume), quiet=args.quiet)
    if result.interrupted:
        return 130
    pictures = render_run(result.run_dir)
    print(f"\nfound architecture ({result.run_dir / 'genotype.json'}):")
    print(describe_genotype(result.genotype))
    if pictures:
        print("pictures: " + ", ".join(str(p) for p in pictures))
    return 0
