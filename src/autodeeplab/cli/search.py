"""``autodeeplab search``: run (or resume) an architecture search and print what it found."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from ..search_config import SearchConfig
from .common import add_run_arguments, resolve_run_config

DEFAULT_PRESET = "cpu"


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "search",
        help="search a cell and a network path (Auto-DeepLab §4)",
        description="Search an architecture. With no arguments: a short search on the built-in synthetic "
        f"data (preset '{DEFAULT_PRESET}'); '--preset paper' gives the paper's setting.",
    )
    add_run_arguments(p, SearchConfig, DEFAULT_PRESET, "--set epochs=10 --set space.filter_multiplier=8")
    p.add_argument(
        "--estimate",
        action="store_true",
        help="predict this search's memory and time (a short calibration on this machine), print it and exit",
    )
    p.set_defaults(func=run)


def resolve_config(args: argparse.Namespace) -> SearchConfig:
    return resolve_run_config(args, SearchConfig, DEFAULT_PRESET, "search")


def run(args: argparse.Namespace) -> int:
    from ..plots import describe_genotype, render_run
    from ..search import run_search

    config = resolve_config(args)
    if args.estimate:
        return print_estimate(config, quiet=args.quiet)
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


def print_estimate(config: SearchConfig, quiet: bool = False) -> int:
    """``--estimate``: print the predicted saved activations, peak memory, step times and search time."""
    from ..device import resolve_device
    from ..estimate import estimate_search, format_estimate

    device = resolve_device(config.device)
    estimate = estimate_search(config, device, echo=(lambda s: None) if quiet else print)
    print(format_estimate(estimate))
    return 0
