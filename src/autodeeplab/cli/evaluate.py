"""``autodeeplab eval``: mIoU, per-class IoU and pixel accuracy of a trained model over a dataset split."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..errors import ConfigError

DEFAULT_SPLIT = "val"


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "eval",
        help="evaluate a trained model (mIoU, per-class IoU, pixel accuracy)",
        description="Evaluate a trained model over a whole split: one confusion matrix, the ignore label "
        "excluded. Single scale by default; --scales and --flip give multi-scale inference (the paper's "
        "test-set tables use 0.5 0.75 1 1.25 1.5 1.75 with --flip). Prints a table; --json writes it.",
    )
    p.add_argument(
        "checkpoint", metavar="CHECKPOINT", help="model.pt of a training run (or the run directory)"
    )
    p.add_argument("--dataset", help="dataset name (default: the one the model was trained on)")
    p.add_argument("--data-root", help="dataset folder (default: the training run's)")
    p.add_argument("--split", default=DEFAULT_SPLIT, help=f"split to evaluate (default: {DEFAULT_SPLIT})")
    p.add_argument(
        "--scales", type=float, nargs="+", default=[1.0], metavar="S", help="image scales (default: 1)"
    )
    p.add_argument("--flip", action="store_true", help="also average the horizontally flipped images")
    p.add_argument(
        "--window",
        type=int,
        nargs=2,
        metavar=("H", "W"),
        help="sliding-window inference with tiles of H×W (for images too large for memory)",
    )
    p.add_argument("--max-images", type=int, metavar="N", help="evaluate the first N images only")
    p.add_argument("--json", metavar="OUT", help="write the results as JSON to this file")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda[:i] (default: auto)")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress display")
    p.set_defaults(func=run)


def inference_settings(args: argparse.Namespace):  # -> InferenceSettings
    """The --scales/--flip/--window flags as :class:`InferenceSettings` (bad values: one-line errors)."""
    from ..evaluate import InferenceSettings

    window = getattr(args, "window", None)
    try:
        return InferenceSettings(tuple(args.scales), args.flip, tuple(window) if window else None)
    except ValueError as exc:
        flag = "--window" if "window" in str(exc) else "--scales"
        raise ConfigError(f"{flag}: {exc}") from None


def run(args: argparse.Namespace) -> int:
    from ..data import EvalTransform, build_dataset
    from ..device import resolve_device
    from ..evaluate import evaluate
    from ..fileio import atomic_write_json
    from ..progress import Progress
    from ..trained import check_classes, load_trained

    if args.max_images is not None and args.max_images < 1:
        raise ConfigError(f"--max-images: must be a positive integer, got {args.max_images}")
    settings = inference_settings(args)
    if args.json and Path(args.json).is_dir():
        raise ConfigError(f"--json: {args.json} is a directory, not a file name")
    device = resolve_device(args.device)
    model, info = load_trained(args.checkpoint, device=device)
    name = args.dataset or info.dataset
    same = name == info.dataset
    root = args.data_root or (info.data_root if same else None)
    options = info.dataset_options if same else {}
    dataset = build_dataset(name, root, args.split, transform=EvalTransform(), **options)
    check_classes(args.checkpoint, info, dataset.num_classes, f"{name} {args.split}")
    total = len(dataset) if args.max_images is None else min(len(dataset), args.max_images)
    with Progress(total, f"eval {name} {args.split}", quiet=args.quiet) as bar:
        result = evaluate(
            model,
            (dataset[i] for i in range(total)),
            dataset.num_classes,
            dataset.class_names,
            dataset.ignore_index,
            settings,
            device=device,
            progress=lambda done: bar.update(images=1),
        )
    result.extra = {"checkpoint": str(args.checkpoint), "dataset": name, "split": args.split}
    scales = " ".join(f"{s:g}" for s in settings.scales)
    print(
        f"{args.checkpoint}: {name} {args.split}, {result.num_images} images, scales {scales}"
        f"{' + flip' if settings.flip else ''}, {result.seconds:.1f}s"
    )
    print(result.metrics.format_table())
    if args.json:
        atomic_write_json(args.json, result.to_dict())
        print(f"results written to {args.json}")
    return 0
