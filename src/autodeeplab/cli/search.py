"""``autodeeplab search``: run (or resume) an architecture search and print what it found."""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

from autodeeplab.cli.common import add_run_arguments, resolve_run_config
from autodeeplab.errors import ConfigError
from autodeeplab.search.config import SEARCH_SPACES, SearchConfig

DEFAULT_PRESET = "cpu"


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "search",
        help="search a cell and a network path (Auto-DeepLab §4), or a DiNTS topology (--space dints)",
        description="Search an architecture. With no arguments: a short search on the built-in synthetic "
        f"data (preset '{DEFAULT_PRESET}'); '--preset paper' gives the paper's setting. '--space dints' "
        "searches DiNTS's multi-path topology under a memory budget (--set dints.memory_budget=0.5) instead.",
    )
    p.add_argument(
        "--space",
        choices=SEARCH_SPACES,
        help="the search space (the setting search_space; default: autodeeplab, or the run's on --resume)",
    )
    add_run_arguments(p, SearchConfig, DEFAULT_PRESET, "--set epochs=10 --set space.filter_multiplier=8")
    p.add_argument(
        "--estimate",
        action="store_true",
        help="predict this search's memory and time (a short calibration on this machine), print it and exit",
    )
    p.add_argument(
        "--estimate-no-time",
        action="store_true",
        help="like --estimate, memory only: no timed calibration steps (seconds even at the paper's size)",
    )
    p.add_argument(
        "--threads",
        type=int,
        metavar="N",
        help="with --estimate: torch threads for the calibration (default: torch's, as the search uses; "
        "time the way the search will run)",
    )
    p.set_defaults(func=run)


def resolve_config(args: argparse.Namespace) -> SearchConfig:
    if getattr(args, "space", None):
        args.overrides = [*args.overrides, f"search_space={args.space}"]
    return resolve_run_config(args, SearchConfig, DEFAULT_PRESET, "search")


def run(args: argparse.Namespace) -> int:
    from autodeeplab.search.loop import run_search
    from autodeeplab.viz.dints import describe_architecture
    from autodeeplab.viz.plots import render_run

    if args.threads is not None and args.threads < 1:
        raise ConfigError(f"--threads: must be at least 1, got {args.threads}")
    estimating = args.estimate or args.estimate_no_time
    if args.threads is not None and not estimating:
        raise ConfigError("--threads sets the threads of --estimate's calibration; give --estimate too")
    if estimating and (args.output or args.resume):
        raise ConfigError("--estimate writes nothing and runs no search; drop --output/--resume")
    config = resolve_config(args)
    if args.estimate or args.estimate_no_time:
        return print_estimate(
            config, quiet=args.quiet, measure_time=not args.estimate_no_time, threads=args.threads
        )
    run_dir = Path(args.resume or args.output or Path("runs") / time.strftime("search-%Y%m%d-%H%M%S"))
    result = run_search(config, run_dir, resume=bool(args.resume), quiet=args.quiet)
    if result.interrupted:
        return 130
    if os.environ.get("RANK", "0") != "0":
        return 0  # rank 0 draws the pictures and prints the architecture
    pictures = render_run(result.run_dir, note=print)
    print(f"\nfound architecture ({result.run_dir / result.genotype.FILE_NAME}):")
    print(describe_architecture(result.genotype))
    if pictures:
        print("pictures: " + ", ".join(str(p) for p in pictures))
    return 0


def print_estimate(
    config: SearchConfig, quiet: bool = False, measure_time: bool = True, threads: int | None = None
) -> int:
    """``--estimate``: print the predicted saved activations, peak memory, step times and search time.

    ``measure_time`` False skips the timed calibration steps (memory only: one forward per step kind at
    a small crop). ``threads`` sets torch's intra-op threads for the calibration, restored afterwards.
    """
    import torch

    from autodeeplab.runs.device import resolve_device
    from autodeeplab.search.estimate import estimate_search, format_estimate

    device = resolve_device(config.device)
    before = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        echo = (lambda s: None) if quiet else print
        estimate = estimate_search(config, device, measure_time=measure_time, echo=echo, quiet=quiet)
    finally:
        torch.set_num_threads(before)
    print(format_estimate(estimate))
    if measure_time and device.type == "cpu":
        print(f"  (timed with {threads or before} CPU thread(s); --threads N to time with another count)")
    return 0
