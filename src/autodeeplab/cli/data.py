"""``autodeeplab data``: check a dataset for every problem at once; count what it holds; prepare a resized
Cityscapes copy.

``autodeeplab data check --dataset NAME --data-root PATH [--split S ...]`` prints one line per problem and
exits 2 when there is any; a clean dataset gets one summary line and exit 0.
"""

from __future__ import annotations

import argparse
import sys

from autodeeplab.cli.common import add_overwrite_argument


def register(sub: argparse._SubParsersAction) -> None:
    from autodeeplab.data.registry import DATASET_NAMES, DEFAULT_DATASET

    p = sub.add_parser(
        "data",
        help="check a dataset, or prepare a resized copy",
        description="Dataset tools: find every broken file of a dataset; write a half-resolution Cityscapes.",
    )
    commands = p.add_subparsers(dest="data_command", metavar="ACTION")
    commands.required = True

    check = commands.add_parser(
        "check",
        help="scan a dataset and list every problem",
        description="Decode every image and label of the chosen splits; report every problem, one per line.",
    )
    check.add_argument("--dataset", default=DEFAULT_DATASET, choices=DATASET_NAMES, help="dataset layout")
    check.add_argument("--data-root", metavar="PATH", help="dataset folder (not for synthetic)")
    add_volume_split_arguments(check)
    check.add_argument(
        "--split", action="append", metavar="SPLIT", help="split to check (repeatable; default: all splits)"
    )
    check.set_defaults(func=run_check)

    stats = commands.add_parser(
        "stats",
        help="class balance and image sizes per split",
        description="Per split: samples, image sizes, each class's share of the labelled pixels and the "
        "images it appears in, the ignored fraction, classes never seen. Prints a table and writes "
        "stats.json and class_pixels.png. For volumes (nifti, msd): volumes, the range of shapes and voxel "
        "spacings, voxel shares of each class and stored label value, the volumes each class appears in; "
        "class_voxels.png.",
    )
    stats.add_argument("--dataset", default=DEFAULT_DATASET, choices=DATASET_NAMES, help="dataset layout")
    stats.add_argument("--data-root", metavar="PATH", help="dataset folder (not for synthetic)")
    add_volume_split_arguments(stats)
    stats.add_argument(
        "--split", action="append", metavar="SPLIT", help="split to count (repeatable; default: all splits)"
    )
    stats.add_argument(
        "--output",
        "-o",
        metavar="DIR",
        help="folder for stats.json and class_pixels.png (class_voxels.png for volumes; default: "
        "data-stats-<dataset>)",
    )
    add_overwrite_argument(stats)
    stats.set_defaults(func=run_stats)

    prepare = commands.add_parser(
        "prepare",
        help="write a resized Cityscapes copy (e.g. the paper's half resolution)",
        description="Resize Cityscapes once (images bilinear, labels nearest, as train ids) into a new folder"
        " that is itself a Cityscapes root; re-running resumes.",
    )
    prepare.add_argument("--dataset", default="cityscapes", choices=("cityscapes",), help="dataset layout")
    prepare.add_argument("--data-root", metavar="PATH", required=True, help="the full-resolution Cityscapes")
    prepare.add_argument("--out", metavar="PATH", required=True, help="new (or empty) folder for the copy")
    prepare.add_argument("--scale", type=float, default=0.5, help="resize factor (default 0.5: 512x1024)")
    prepare.add_argument(
        "--split", action="append", metavar="SPLIT", help="split to copy (repeatable; default: train and val)"
    )
    prepare.set_defaults(func=run_prepare)


def _progress_printer():
    """A progress callback that rewrites one stderr line, or ``None`` when stderr is not a terminal."""
    if not sys.stderr.isatty():
        return None

    def show(split: str, done: int, total: int) -> None:
        end = "\n" if done == total else ""
        sys.stderr.write(f"\r  {split}: {done}/{total}{end}")
        sys.stderr.flush()

    return show


def add_volume_split_arguments(p: argparse.ArgumentParser) -> None:
    """How a volume dataset (nifti, msd) is split, as in a run's data.volumes.split_order and
    data.split_fractions (the hippocampus presets: --split-order sorted --split-fractions 0.1 0.2)."""
    p.add_argument("--split-order", choices=("seeded", "sorted"), help="volumes: how ids are split (seeded)")
    p.add_argument(
        "--split-fractions", type=float, nargs=2, metavar=("VAL", "TEST"), help="volumes: (0.15 0.15)"
    )


def volume_split_options(args: argparse.Namespace) -> dict:
    """The reader options of --split-order/--split-fractions; refused for datasets of images."""
    from autodeeplab.data.volume_checks import is_volume_dataset
    from autodeeplab.errors import ConfigError

    options = {}
    if args.split_order is not None:
        options["split_order"] = args.split_order
    if args.split_fractions is not None:
        options["split_fractions"] = tuple(args.split_fractions)
    if options and not is_volume_dataset(args.dataset):
        raise ConfigError("--split-order/--split-fractions: for volume datasets (nifti, msd) only")
    return options


def run_check(args: argparse.Namespace) -> int:
    from autodeeplab.data.checks import check_dataset_report
    from autodeeplab.data.registry import dataset_class

    options = volume_split_options(args)
    report = check_dataset_report(
        args.dataset, args.data_root, args.split, progress=_progress_printer(), volume_options=options
    )
    where = args.dataset if args.data_root is None else f"{args.dataset} at {args.data_root}"
    unit = "volumes" if getattr(dataset_class(args.dataset), "spatial_dims", 2) == 3 else "samples"
    counts = ", ".join(f"{split} {count}" for split, count in report.samples.items())
    total = report.distinct_samples
    for found in report.problems:
        print(found)
    for warning in report.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    if report.problems:
        count = len(report.problems)
        noun = "problem" if count == 1 else "problems"
        print(f"{where}: {count} {noun} in {total} {unit} ({counts})", file=sys.stderr)
        return 2
    print(f"{where}: no problems in {total} {unit} ({counts})")
    return 0


STATS_FILES = ("stats.json", "class_pixels.png")
VOLUME_STATS_FILES = ("stats.json", "class_voxels.png")
"""What ``data stats`` writes for a volume dataset (``nifti``, ``msd``): the picture speaks of voxels."""


def run_stats(args: argparse.Namespace) -> int:
    from pathlib import Path

    from autodeeplab.data.registry import dataset_class
    from autodeeplab.data.stats import STATS_FORMAT, dataset_stats, format_stats
    from autodeeplab.errors import ConfigError
    from autodeeplab.fileio import atomic_write_json, loads_json
    from autodeeplab.outputs import check_output_folder, is_our_png
    from autodeeplab.viz.data import plot_class_fractions

    def ours(path: Path) -> bool:
        if path.suffix == ".png":
            return is_our_png(path)
        try:
            return loads_json(path.read_text(encoding="utf-8")).get("format") == STATS_FORMAT
        except (OSError, UnicodeDecodeError, ValueError, AttributeError):
            return False

    volumes = getattr(dataset_class(args.dataset), "spatial_dims", 2) == 3
    files = VOLUME_STATS_FILES if volumes else STATS_FILES
    out = Path(args.output or f"data-stats-{args.dataset}")
    inputs = [Path(args.data_root)] if args.data_root else []
    check_output_folder(out, "--output", files, inputs=inputs, overwrite=args.overwrite, ours=ours)
    if args.data_root and out.resolve().is_relative_to(Path(args.data_root).resolve()):
        # Files inside a dataset's folder could be read back as its images or labels.
        root = args.data_root
        raise ConfigError(f"--output: {out} is inside the data root {root}; write the stats elsewhere")
    options = volume_split_options(args)
    stats = dataset_stats(args.dataset, args.data_root, args.split, progress=_progress_printer(), **options)
    print(format_stats(stats))
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / files[0], stats.to_json())
    fractions = {name: split.fractions() for name, split in stats.splits.items()}
    plot_class_fractions(stats.dataset, stats.class_names, fractions, out / files[1], unit=stats.unit)
    print(f"wrote {out / files[0]} and {out / files[1]}")
    return 0


def run_prepare(args: argparse.Namespace) -> int:
    from autodeeplab.data.prepare import prepare_cityscapes

    splits = args.split or ("train", "val")
    written = prepare_cityscapes(args.data_root, args.out, args.scale, splits, progress=_progress_printer())
    print(f"{args.out}: wrote {written} files ({', '.join(splits)} at scale {args.scale:g})")
    return 0
