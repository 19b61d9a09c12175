"""``autodeeplab show``: pictures and a text summary of a run directory, a genotype or arch_params file, or
a built-in genotype (``paper``)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from autodeeplab.fileio import loads_json


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "show",
        help="draw the found architecture (path, cell, alpha/beta history, curves) and summarise it",
        description=(
            "Render PNG pictures of an architecture and print a text summary. TARGET is a run directory "
            "(everything it allows: network path with beta, cell, alpha/beta over the epochs, training "
            "curves), a genotype.json or arch_params.json file, or a built-in genotype name such as 'paper'."
        ),
    )
    p.add_argument("target", metavar="TARGET", help="RUN_DIR, GENOTYPE.json, arch_params.json or 'paper'")
    p.add_argument(
        "--output",
        "-o",
        metavar="DIR",
        help="folder for the PNGs (default: RUN_DIR/plots, or NAME_plots beside a file or here)",
    )
    p.add_argument("--no-plots", action="store_true", help="print the summary only")
    p.add_argument(
        "--overwrite", action="store_true", help="replace existing PNGs not written by autodeeplab"
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from autodeeplab.errors import GenotypeError
    from autodeeplab.outputs import check_output_folder
    from autodeeplab.space.autodeeplab.decode import decode, load_arch_params
    from autodeeplab.space.autodeeplab.genotype import BUILTIN, Genotype
    from autodeeplab.space.dints.arch import is_dints_document
    from autodeeplab.viz.dints import describe_architecture
    from autodeeplab.viz.plots import plot_cell, plot_network_path, render_run

    target = Path(args.target)
    written: list[Path] = []
    if target.is_file() and is_dints_document(target):
        return _show_dints_file(target, args)
    if args.target in BUILTIN and not target.exists():
        genotype, beta = BUILTIN[args.target], None
        default_out = Path(f"{args.target}_plots")
    elif target.is_dir():
        genotype = _run_genotype(target)
        out = Path(args.output) if args.output else target / "plots"
        if not args.no_plots:
            # RUN/plots is the run's own picture folder (pictures from before the PNG marker included)
            mine = args.overwrite or not args.output
            check_output_folder(out, "--output", RUN_PICTURES, inputs=_run_inputs(target), overwrite=mine)
            written = render_run(target, out, note=lambda line: print(line, file=sys.stderr))
        if genotype is None and not written:
            raise GenotypeError(
                f"{target}: nothing to show (no genotype.json, arch_params.json, arch_history.jsonl or "
                "metrics.jsonl)"
            )
        _report(describe_architecture(genotype) if genotype else None, written)
        return 0
    elif target.is_file():
        if _looks_like_arch_params(target):
            alpha, beta, num_blocks = load_arch_params(target)
            genotype = decode(alpha, beta, num_blocks)
        else:
            genotype, beta = Genotype.load(target), None
        default_out = target.with_name(f"{target.stem}_plots")
    else:
        raise GenotypeError(
            f"{args.target}: not a run directory, a genotype or arch_params file, or a built-in genotype "
            f"({', '.join(BUILTIN)})"
        )
    if not args.no_plots:
        out = Path(args.output) if args.output else default_out
        check_output_folder(out, "--output", RUN_PICTURES[:2], inputs=[target], overwrite=args.overwrite)
        written.append(plot_network_path(beta, genotype, out / "network_path.png"))
        written.append(plot_cell(genotype, out / "cell.png"))
    _report(describe_architecture(genotype), written)
    return 0


RUN_PICTURES = ["network_path.png", "cell.png", "arch_history.png", "curves.png", "topology.png"]
"""What ``show`` may draw (an Auto-DeepLab file's pictures are the first two, a DiNTS file's the last);
the names of :func:`render_run`."""
RUN_FILES = ("genotype.json", "dints_arch.json", "arch_params.json", "arch_history.jsonl", "metrics.jsonl")


def _run_inputs(run_dir: Path) -> list[Path]:
    """The files of a run that ``show`` reads (a picture must never replace one of them)."""
    return [run_dir / n for n in RUN_FILES]


def _show_dints_file(target: Path, args: argparse.Namespace) -> int:
    """``show dints_arch.json`` / ``show arch_params.json`` of a DiNTS search: the topology picture."""
    from autodeeplab.outputs import check_output_folder
    from autodeeplab.space.dints.arch import DintsArch
    from autodeeplab.space.dints.decode import decode_record
    from autodeeplab.viz.dints import describe_dints, plot_dints_topology

    record = loads_json(target.read_text(encoding="utf-8"))
    if "edge_logits" in record or "edge_probabilities" in record:
        arch = decode_record(record, str(target))
    else:
        arch, record = DintsArch.from_dict(record, str(target)), None
    written = []
    if not args.no_plots:
        out = Path(args.output) if args.output else target.with_name(f"{target.stem}_plots")
        check_output_folder(out, "--output", ["topology.png"], inputs=[target], overwrite=args.overwrite)
        written.append(plot_dints_topology(arch, record, out / "topology.png"))
    _report(describe_dints(arch), written)
    return 0


def _run_genotype(run_dir: Path) -> Any:
    """The run's architecture (a genotype, or a DiNTS topology), decoded from arch_params.json without one."""
    from autodeeplab.space.architectures import load_architecture, run_architecture_file
    from autodeeplab.space.autodeeplab.decode import decode, load_arch_params
    from autodeeplab.space.dints.arch import is_dints_document
    from autodeeplab.space.dints.decode import decode_record

    found = run_architecture_file(run_dir)
    if found is not None:
        return load_architecture(found)
    params = run_dir / "arch_params.json"
    if is_dints_document(params):
        return decode_record(loads_json(params.read_text(encoding="utf-8")), str(params))
    if params.exists():
        return decode(*load_arch_params(params))
    return None


def _looks_like_arch_params(path: Path) -> bool:
    try:
        data = loads_json(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return False  # let the genotype loader report the problem
    return isinstance(data, dict) and "alpha" in data


def _report(summary: str | None, written: list[Path]) -> None:
    if summary:
        print(summary)
    for path in written:
        print(f"wrote {path}")
