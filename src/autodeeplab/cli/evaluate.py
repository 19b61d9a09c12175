"""``autodeeplab eval``: mIoU, per-class IoU and pixel accuracy of a trained model over a dataset split.

Settings are an :class:`~autodeeplab.infer.evaluate.EvalConfig`, resolved as
``defaults < --preset < --config FILE.yaml < --set KEY=VALUE < the shortcut flags`` (``--split``,
``--scales``, ``--flip``, ...). The results are printed as a table and written as JSON: to ``--json OUT``,
or by default beside the checkpoint as ``eval-<split>.json``. A file there that this package did not
write is never replaced (the JSON is then skipped, with a note); ``--no-json`` writes nothing.
"""

from __future__ import annotations

import argparse
import dataclasses
import re
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from autodeeplab.errors import ConfigError

if TYPE_CHECKING:  # the model file module imports torch: not at the CLI's start
    from autodeeplab.nets.model_file import TrainedInfo

# Shortcut flags and the EvalConfig field each one sets (flags win over preset, file and --set).
FLAG_FIELDS: dict[str, str] = {
    "split": "split",
    "dataset": "dataset",
    "data_root": "data_root",
    "scales": "scales",
    "flip": "flip",
    "window": "window",
    "largest_component": "largest_component",
    "max_images": "max_images",
    "device": "device",
}
DEFAULT_JSON_NAME = "eval-{split}.json"


def register(sub: argparse._SubParsersAction) -> None:
    from autodeeplab.cli.common import add_settings_arguments
    from autodeeplab.infer.evaluate import DEFAULT_EVAL_PRESET, EvalConfig

    p = sub.add_parser(
        "eval",
        help="evaluate a trained model (mIoU, per-class IoU, pixel accuracy)",
        description="Evaluate a trained model over a whole split: one confusion matrix, the ignore label "
        "excluded. Single scale by default; --preset paper (or --scales and --flip) gives the paper's "
        "multi-scale + flip inference (0.5 .. 1.75). Prints a table and writes it as JSON, by default "
        "beside the checkpoint as eval-<split>.json.",
    )
    p.add_argument(
        "checkpoint", metavar="CHECKPOINT", help="model.pt of a training run (or the run directory)"
    )
    add_settings_arguments(
        p,
        EvalConfig,
        f"named settings (default: {DEFAULT_EVAL_PRESET}; paper = multi-scale + flip)",
        "--set scales=[0.75,1,1.25] --set window=[513,513]",
    )
    p.add_argument("--dataset", help="dataset name (default: the one the model was trained on)")
    p.add_argument("--data-root", help="dataset folder (default: the training run's)")
    p.add_argument("--split", help="split to evaluate (default: val)")
    p.add_argument("--scales", type=float, nargs="+", metavar="S", help="image scales (default: 1)")
    p.add_argument(
        "--flip",
        action=argparse.BooleanOptionalAction,
        help="also average the horizontally flipped images; volumes: all 8 mirrorings along the 3 axes "
        "(--no-flip: do not)",
    )
    p.add_argument(
        "--window",
        type=int,
        nargs="+",
        metavar="SIZE",
        help="sliding-window inference with tiles of H W (images too large for memory) or D H W "
        "(volumes; default: the training patch)",
    )
    p.add_argument(
        "--largest-component",
        action="store_true",
        default=None,
        help="volumes: keep each class's largest connected piece only (nnU-Net's post-processing)",
    )
    p.add_argument("--max-images", type=int, metavar="N", help="evaluate the first N images only")
    p.add_argument("--device", help="auto, cpu or cuda[:i] (default: auto)")
    p.add_argument(
        "--json", metavar="OUT", help="write the results JSON here (default: beside the checkpoint)"
    )
    p.add_argument("--no-json", action="store_true", help="print the table only, write no JSON")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress display")
    p.set_defaults(func=run)


def inference_settings(args: argparse.Namespace):  # -> InferenceSettings
    """The --scales/--flip/--window flags as :class:`InferenceSettings` (bad values: one-line errors).

    Used by ``predict``; flags that are absent or ``None`` take the single-scale defaults.
    """
    from autodeeplab.infer.evaluate import InferenceSettings

    scales = getattr(args, "scales", None) or [1.0]
    window = getattr(args, "window", None)
    try:
        return InferenceSettings(
            tuple(scales), bool(getattr(args, "flip", False)), tuple(window) if window else None
        )
    except (ValueError, ConfigError) as exc:
        # The settings name their field ("scales: ..."); the user typed the flag, so name the flag.
        message = str(exc)
        flag = "--window" if "window" in message else "--scales"
        raise ConfigError(f"{flag}: {message.split(': ', 1)[-1]}") from None


def resolve_eval_config(args: argparse.Namespace):  # -> EvalConfig (imported lazily with torch)
    """defaults < --preset < --config < --set < shortcut flags; each bad flag is named in its error."""
    from autodeeplab.config.settings import load_config
    from autodeeplab.infer.evaluate import DEFAULT_EVAL_PRESET, EvalConfig

    if getattr(args, "max_images", None) is not None and args.max_images < 1:
        raise ConfigError(f"--max-images: must be a positive integer, got {args.max_images}")
    config = load_config(
        EvalConfig,
        preset=getattr(args, "preset", None) or DEFAULT_EVAL_PRESET,
        yaml_path=getattr(args, "config", None),
        overrides=getattr(args, "overrides", ()),
    )
    for flag, name in FLAG_FIELDS.items():
        value = getattr(args, flag, None)
        if value is None:
            continue
        value = tuple(value) if isinstance(value, list) else value
        try:
            config = dataclasses.replace(config, **{name: value})
        except (ValueError, ConfigError) as exc:
            message = str(exc).removeprefix(f"{name}: ")
            raise ConfigError(f"--{flag.replace('_', '-')}: {message}") from None
    return config


def checkpoint_file(checkpoint: str | Path) -> Path:
    """The file a checkpoint argument names (a run directory stands for its ``model.pt``)."""
    from autodeeplab.nets.model_file import MODEL_FILE

    path = Path(checkpoint)
    return path / MODEL_FILE if path.is_dir() else path


def default_json_path(checkpoint: str | Path, split: str) -> Path:
    """``eval-<split>.json`` in the checkpoint's folder (the split made safe as a file name)."""
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", split)
    return checkpoint_file(checkpoint).parent / DEFAULT_JSON_NAME.format(split=safe)


def json_target(args: argparse.Namespace, split: str) -> tuple[Path | None, str | None]:
    """(where to write the results JSON, or None; why it is not written, for a one-line note).

    ``--json OUT`` that names a folder or a file this package did not write is an error before anything
    runs; the default location is skipped with a note instead, since nobody asked for it.
    """
    from autodeeplab.infer.evaluate import is_eval_json
    from autodeeplab.outputs import check_writable

    if args.no_json:
        if args.json:
            raise ConfigError("--json and --no-json contradict each other; give one")
        return None, None
    if args.json:
        path = Path(args.json)
        if path.is_dir():
            raise ConfigError(f"--json: {args.json} is a directory, not a file name")
        if path.exists() and not is_eval_json(path):
            raise ConfigError(
                f"--json: {args.json} exists and is not an autodeeplab eval result; not overwriting it"
            )
        check_writable(path, "--json")  # now, not after the evaluation
        return path, None
    path = default_json_path(args.checkpoint, split)
    if path.exists() and not is_eval_json(path):
        return None, f"{path} exists and is not an autodeeplab eval result; not overwriting it"
    return path, None


def run(args: argparse.Namespace) -> int:
    from autodeeplab.data.registry import build_dataset
    from autodeeplab.data.transforms import EvalTransform
    from autodeeplab.infer.evaluate import evaluate, write_eval_json
    from autodeeplab.nets.model_file import check_classes, load_model
    from autodeeplab.runs.device import resolve_device
    from autodeeplab.runs.progress import Progress

    config = resolve_eval_config(args)
    json_path, skipped = json_target(args, config.split)
    device = resolve_device(config.device)
    model, info = load_model(args.checkpoint, device=device)
    note_unfinished_training(args.checkpoint, info)
    name = config.dataset or info.dataset
    same = name == info.dataset
    root = config.data_root or (info.data_root if same else None)
    options = info.dataset_options if same else {}
    volumes = info.patch_size is not None
    if not volumes and config.window is not None and len(config.window) != 2:
        raise ConfigError(
            f"window: images take two sizes (H W), got {list(config.window)} (three are for volumes)"
        )
    transform = None if volumes else EvalTransform()
    dataset = build_dataset(name, root, config.split, transform=transform, **options)
    check_classes(args.checkpoint, info, dataset.num_classes, f"{name} {config.split}", dataset.class_names)
    if config.largest_component and not (volumes or getattr(dataset, "spatial_dims", 2) == 3):
        raise ConfigError("--largest-component: a post-processing of volumes, not of images")
    if volumes or getattr(dataset, "spatial_dims", 2) == 3:
        from autodeeplab.cli.evaluate_volumes import evaluate_volume_split

        where = (name, root, config.split)
        return evaluate_volume_split(args, config, model, info, dataset, where, (json_path, skipped), device)
    settings = config.inference_settings()
    total = len(dataset) if config.max_images is None else min(len(dataset), config.max_images)
    with Progress(total, f"eval {name} {config.split}", quiet=args.quiet) as bar:
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
    result.extra = {
        "checkpoint": str(checkpoint_file(args.checkpoint).resolve()),
        **training_steps(info),
        "dataset": name,
        "data_root": str(Path(root).resolve()) if root else None,
        "split": config.split,
    }
    scales = " ".join(f"{s:g}" for s in settings.scales)
    print(
        f"{args.checkpoint}: {name} {config.split}, {result.num_images} images, scales {scales}"
        f"{' + flip' if settings.flip else ''}, {result.seconds:.1f}s"
    )
    print(result.metrics.format_table())
    return write_results(args, json_path, skipped, lambda path: write_eval_json(path, result, config))


def training_steps(info: TrainedInfo) -> dict[str, int]:
    """The training step the model is from and the steps its training was to run, for the results JSON."""
    return {"step": info.step, "iterations": info.iterations}


def note_unfinished_training(checkpoint: str, info: TrainedInfo) -> None:
    """A one-line note on stderr when the model is from a training that stopped before its last step (an
    interrupted run, or a training-state checkpoint): its results are not those of the finished network."""
    if info.iterations and info.step < info.iterations:
        print(
            f"note: {checkpoint}: from a training stopped at step {info.step} of {info.iterations}; "
            "these results are that step's",
            file=sys.stderr,
        )


def write_results(args: argparse.Namespace, json_path: Path | None, skipped: str | None, write) -> int:
    """Write the results JSON with ``write(json_path)`` (unless there is none) and say where, or why not.

    A failure to write is an error when ``--json`` asked for the file (the table is printed already), a
    note on stderr when it was only the default place. Returns the exit code, 0."""
    if json_path is not None:
        try:
            write(json_path)
        except OSError as exc:
            reason = f"cannot write {json_path} ({exc.strerror or exc})"
            if args.json:  # asked for explicitly: a failure, though the table above is printed
                raise ConfigError(f"--json: {reason}") from None
            skipped = f"{reason}; give --json OUT to write elsewhere"
        else:
            print(f"results written to {json_path}")
    if skipped:
        print(f"note: results JSON not written: {skipped}", file=sys.stderr)
    return 0
