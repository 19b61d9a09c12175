"""``autodeeplab decode``: arch_params.json → genotype.json (cell by top-2 inputs, path by Viterbi), or, for a
DiNTS search, → dints_arch.json (the most probable topology that is fed and reaches the head)."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "decode",
        help="decode arch_params.json into a genotype.json (or a DiNTS search's into a dints_arch.json)",
        description="Decode softmax(alpha) and beta weights into a genotype (paper §4.3); a DiNTS search's "
        "edge and op logits into the most probable valid topology (dynamic programming over blocks).",
    )
    p.add_argument("arch_params", help="an arch_params.json written by a search")
    p.add_argument(
        "--output", "-o", metavar="FILE.json", help="where to write the architecture (default: print)"
    )
    p.add_argument(
        "--overwrite", action="store_true", help="replace an existing output not written by autodeeplab"
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from autodeeplab.errors import GenotypeError
    from autodeeplab.fileio import parse_json_document, read_document
    from autodeeplab.outputs import check_output_file, refuse_other_content
    from autodeeplab.space.autodeeplab.budget_decode import budget_from_record, decode_within_budget
    from autodeeplab.space.autodeeplab.decode import decode, load_arch_params
    from autodeeplab.space.dints.decode import decode_record

    if args.output:  # the place checked before reading (a refusal changes nothing), an existing file below
        check_output_file(args.output, "--output", inputs=[args.arch_params], overwrite=True)
    path = Path(args.arch_params)
    record = parse_json_document(read_document(path, "arch_params", GenotypeError), str(path), GenotypeError)
    if isinstance(record, dict) and record.get("kind") == "dints":
        genotype = decode_record(record, str(path))
    else:
        alpha, beta, num_blocks = load_arch_params(args.arch_params)
        budget = budget_from_record(record, beta.shape, str(path))  # a search decoded within a budget
        if budget is None:
            genotype = decode(alpha, beta, num_blocks)
        else:
            genotype = decode_within_budget(alpha, beta, num_blocks, *budget)
    if args.output:
        refuse_other_content(args.output, "--output", genotype.to_json(), args.overwrite)
        genotype.save(args.output)
        print(f"{args.output}: {genotype.short()}")
    else:
        print(genotype.to_json(), end="")
    return 0
