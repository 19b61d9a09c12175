"""Arguments and config resolution shared by the commands that start a run (``search``, ``train``)."""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from pathlib import Path
from typing import Any

from autodeeplab.config.settings import load_config, preset_names
from autodeeplab.errors import ConfigError
from autodeeplab.fileio import loads_yaml


def add_settings_arguments(
    p: argparse.ArgumentParser, config_cls: type, preset_help: str, example: str
) -> None:
    """--preset/--config/--set: the typed settings of ``config_cls`` (preset < YAML file < overrides)."""
    p.add_argument("--preset", choices=preset_names(config_cls), help=preset_help)
    p.add_argument("--config", metavar="FILE.yaml", help="YAML settings applied over the preset")
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help=f"override one setting, e.g. {example}",
    )


def add_run_arguments(
    p: argparse.ArgumentParser, config_cls: type, default_preset: str, example: str
) -> None:
    """--preset/--config/--set/--dataset/--data-root/--output/--resume/--quiet for a run of ``config_cls``."""
    add_settings_arguments(p, config_cls, f"named settings (default: {default_preset})", example)
    p.add_argument(
        "--dataset",
        help="dataset name (synthetic, camvid, cityscapes, voc, ade20k, folder; volumes: nifti, msd)",
    )
    p.add_argument("--data-root", help="dataset folder")
    p.add_argument("--output", "-o", metavar="RUN_DIR", help="run directory (default: runs/<command>-<time>)")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue an interrupted run from its last checkpoint")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress display")


def resolve_run_config(
    args: argparse.Namespace,
    config_cls: type,
    default_preset: str,
    what: str,
    exclusive: tuple[str, ...] = (),
) -> Any:
    """The run's settings: the run directory's ``config.yaml`` on resume, else preset < file < overrides.

    ``--dataset``/``--data-root`` become ``data.dataset``/``data.root`` overrides; naming a dataset
    without a root clears the preset's root (it belongs to the preset's dataset).

    On resume the overrides apply over the run's ``config.yaml``; the run itself (``run_search`` /
    ``run_training``) then compares the result with its checkpoint's settings and refuses, in one line, a
    change outside its ``RESUMABLE_KEYS`` (the run length, checkpointing, workers, device, data root);
    allowed changes are written back to ``config.yaml`` under ``run_info.resumed_with``.
    """
    resume_after_restart(args, exclusive)
    output_for_ranks(args)
    overrides = list(args.overrides)
    if args.dataset:
        overrides.append(f"data.dataset={args.dataset}")
        # On resume the run's root stays (a change of dataset is refused by the run anyway).
        if not args.data_root and not args.resume:
            overrides.append("data.root=null")
    if args.data_root:
        overrides.append(f"data.root={args.data_root}")
    if args.resume:
        given = [flag for flag in ("preset", "config", *exclusive) if getattr(args, flag, None)]
        if given:
            flags = "/".join(f"--{flag}" for flag in given)
            raise ConfigError(f"--resume takes the settings of the run itself; drop {flags}")
        if args.output:
            raise ConfigError("--resume continues the run in its own folder; drop --output")
        config_file = Path(args.resume) / "config.yaml"
        if not config_file.exists():
            raise ConfigError(f"{args.resume}: not a {what} run directory (no config.yaml)")
        check_run_kind(config_file, what)
        return load_config(config_cls, yaml_path=config_file, overrides=overrides)
    return load_config(
        config_cls, preset=args.preset or default_preset, yaml_path=args.config, overrides=overrides
    )


def resume_after_restart(args: argparse.Namespace, exclusive: tuple[str, ...] = ()) -> None:
    """Under ``torchrun --max-restarts``, a restarted group runs the same command line again: a new run
    (``--output DIR``) whose folder this job made (its ``torchrun.json``: the same run id, or for jobs
    without ``--rdzv-id`` the same host and agent) becomes ``--resume DIR`` with the run's own settings; a
    folder the job made but left before writing its settings (a failure at start-up) is cleared by rank 0
    and the run starts again. ``TORCHELASTIC_RESTART_COUNT`` (set by torchrun) says which attempt this is;
    the first attempt, any run outside torchrun and any folder of another job are untouched (a folder that
    exists is then refused as usual)."""
    from autodeeplab.runs.follower import made_by_this_job

    try:
        attempt = int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0"))
    except ValueError:
        return
    if attempt < 1 or args.resume or not args.output or not made_by_this_job(Path(args.output)):
        return
    if not (Path(args.output) / "config.yaml").exists():
        if os.environ.get("RANK", "0") == "0":
            shutil.rmtree(args.output)  # only this job's leftovers (lock, split) from a failed start
        return
    print(f"torchrun restart {attempt}: resuming {args.output}", file=sys.stderr)
    args.resume, args.output = args.output, None
    for flag in ("preset", "config", *exclusive):
        if getattr(args, flag, None):
            setattr(args, flag, None)


def output_for_ranks(args: argparse.Namespace) -> None:
    """With several processes every rank must name the same run directory: a default folder from the
    clock would differ between ranks (and a restart could not find it), so ``-o`` is required."""
    from autodeeplab.runs.distributed import rank_info_from_env

    if rank_info_from_env().world > 1 and not args.output and not args.resume:
        raise ConfigError("--output: required with several processes (every rank must name the same folder)")


def add_overwrite_argument(p: argparse.ArgumentParser) -> None:
    """``--overwrite``: the one way to replace an existing output that autodeeplab did not write
    (:mod:`autodeeplab.outputs`); an input is never replaced."""
    p.add_argument(
        "--overwrite", action="store_true", help="replace an existing output not written by autodeeplab"
    )


RUN_KINDS = {"search": ("space", "epochs"), "training": ("model", "iterations")}
"""Top-level keys that only a search's / a training's ``config.yaml`` has."""


def check_run_kind(config_file: Path, what: str) -> None:
    """Refuse in one line a ``config.yaml`` that is empty or belongs to the other kind of run (``what``:
    ``"search"`` or ``"training"``), before its keys are read as this kind's settings."""
    import yaml

    try:
        data = loads_yaml(config_file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return  # load_config names the file and the problem
    settings = {k for k in data if k != "run_info"} if isinstance(data, dict) else set()
    if data is None or (isinstance(data, dict) and not settings):
        raise ConfigError(
            f"{config_file}: empty, so this is not a {what} run that can be resumed; start a new run"
        )
    for kind, keys in RUN_KINDS.items():
        if kind != what and all(k in settings for k in keys):
            command = "search" if kind == "search" else "train"
            raise ConfigError(
                f"{config_file.parent}: a {kind} run, not a {what} run; resume it with "
                f"'autodeeplab {command} --resume {config_file.parent}'"
            )
