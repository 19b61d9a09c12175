"""``autodeeplab export``: a trained model as an ONNX file, checked against PyTorch on a random input."""

from __future__ import annotations

import argparse

from autodeeplab.errors import ConfigError

FORMATS = ("onnx",)
DEFAULT_INPUT_SIZE = (513, 513)
"""The paper's PASCAL VOC / ADE20K evaluation size; any size works for the network."""
PARITY_TOLERANCE = 1e-4
"""Largest max-abs logit difference between onnxruntime and PyTorch accepted by the check."""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "export",
        help="export a trained model (ONNX)",
        description="Export a trained model to ONNX, then run the file in onnxruntime on a random input and "
        f"compare its logits with PyTorch (max abs difference must stay below {PARITY_TOLERANCE:g}).",
    )
    p.add_argument(
        "checkpoint", metavar="CHECKPOINT", help="model.pt of a training run (or the run directory)"
    )
    p.add_argument("--format", choices=FORMATS, default="onnx", help="export format (default: onnx)")
    p.add_argument("--output", "-o", required=True, metavar="FILE", help="file to write, e.g. model.onnx")
    p.add_argument(
        "--input-size",
        type=int,
        nargs=2,
        default=list(DEFAULT_INPUT_SIZE),
        metavar=("H", "W"),
        help=f"input height and width traced into the graph (default: {DEFAULT_INPUT_SIZE[0]} "
        f"{DEFAULT_INPUT_SIZE[1]})",
    )
    p.add_argument(
        "--overwrite", action="store_true", help="replace an existing output not written by autodeeplab"
    )
    p.add_argument("--no-check", action="store_true", help="skip the onnxruntime comparison")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import torch

    from autodeeplab.nets.model_file import load_model

    height, width = args.input_size
    if height < 1 or width < 1:
        raise ConfigError(f"--input-size: must be two positive integers, got {height} {width}")
    from autodeeplab.cli.evaluate import checkpoint_file
    from autodeeplab.infer.export import is_our_onnx
    from autodeeplab.outputs import check_output_file

    output = check_output_file(
        args.output,
        "--output",
        inputs=[args.checkpoint, checkpoint_file(args.checkpoint)],
        overwrite=args.overwrite,
        ours=is_our_onnx,
    )
    from autodeeplab.infer.export import (  # ExportError says how to install onnx when missing
        export_onnx,
        onnx_parity,
    )

    model, info = load_model(args.checkpoint, device="cpu")
    if model.config.spatial_dims != 2:
        raise ConfigError(f"{args.checkpoint}: a volumetric (3D) model; ONNX export is for 2D models for now")
    shape = (1, 3, height, width)
    export_onnx(model, output, shape)
    print(f"{output}: ONNX model of {args.checkpoint} ({info.num_classes} classes, input {height}x{width})")
    if args.no_check:
        return 0
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(0))
    diff = onnx_parity(model, output, x)
    verdict = "ok" if diff < PARITY_TOLERANCE else f"ABOVE the tolerance {PARITY_TOLERANCE:g}"
    print(f"onnxruntime vs PyTorch on a random input: max abs logit difference {diff:.2e} ({verdict})")
    return 0 if diff < PARITY_TOLERANCE else 1
