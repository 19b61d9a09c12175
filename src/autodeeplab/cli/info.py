"""``autodeeplab info``: parameter count and multiply-adds of the found network for a genotype (or a DiNTS
architecture, ``--arch dints_arch.json --channels C``).

Examples::

    autodeeplab info --variant S                       # paper genotype, F=20, 19 classes, 1024×2048
    autodeeplab info --genotype runs/search1 --filter-multiplier 8 --num-classes 11 \\
        --input-size 360 480 --json
    autodeeplab info --filter-multiplier 8 --num-classes 4 --in-channels 1 --input-size 96 96 96  # a volume

The network is built on PyTorch's ``meta`` device (shapes only), so even Auto-DeepLab-L at
1024×2048 is counted in about a second; see :mod:`autodeeplab.nets.complexity` for how we count.
"""

from __future__ import annotations

import argparse
import json

import torch

from autodeeplab.errors import ConfigError
from autodeeplab.nets.complexity import count_multiply_adds, count_parameters, format_count
from autodeeplab.nets.dints import DintsNet, dints_shape
from autodeeplab.nets.network import SPATIAL_DIMS, VARIANTS, AutoDeepLabNet, NetworkConfig
from autodeeplab.space.architectures import resolve_architecture
from autodeeplab.space.dints.arch import DintsArch, op_set_dims
from autodeeplab.space.dints.config import DintsNetworkConfig

DEFAULT_INPUT_SIZE = (1024, 2048)
"""Paper Table 2 reports multiply-adds on 1024×2048 Cityscapes images."""


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "info",
        help="parameters and multiply-adds of the found network",
        description="Print the parameter count and multiply-adds of the network built from a genotype.",
    )
    parser.add_argument(
        "--genotype",
        "--arch",
        dest="genotype",
        default="paper",
        help="'paper', a genotype.json or dints_arch.json file, or a search run directory (default: paper)",
    )
    width = parser.add_mutually_exclusive_group()
    width.add_argument("--variant", choices=sorted(VARIANTS), help="Auto-DeepLab-S/M/L (F = 20/32/48)")
    width.add_argument(
        "--filter-multiplier",
        type=_positive_int,
        metavar="F",
        help="filters per block at output stride 4 (default 20)",
    )
    parser.add_argument(
        "--channels",
        type=_positive_int,
        metavar="C",
        help="a DiNTS network's channels at depth 0 (default 64, DiNTS's retraining width)",
    )
    parser.add_argument(
        "--num-classes", type=_positive_int, default=19, metavar="N", help="classes (default 19)"
    )
    parser.add_argument(
        "--in-channels", type=_positive_int, default=3, metavar="C", help="input channels (default 3)"
    )
    parser.add_argument(
        "--input-size",
        type=_positive_int,
        nargs="+",
        default=list(DEFAULT_INPUT_SIZE),
        metavar="SIZE",
        help="input size for the multiply-adds: H W for images (default 1024 2048), D H W for volumes "
        "(builds the 3D network)",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    genotype = resolve_architecture(args.genotype)
    if isinstance(genotype, DintsArch):
        return _dints_info(genotype, args)
    if args.channels is not None:
        raise ConfigError("--channels: the width of a DiNTS network; a genotype takes --filter-multiplier")
    if args.variant is not None:
        filters = VARIANTS[args.variant]
    elif args.filter_multiplier is not None:
        filters = args.filter_multiplier
    else:
        filters = NetworkConfig.filter_multiplier
    size = list(args.input_size)
    if len(size) not in SPATIAL_DIMS:
        raise ConfigError(f"--input-size: expected H W (an image) or D H W (a volume), got {len(size)} sizes")
    config = NetworkConfig(
        filter_multiplier=filters,
        num_classes=args.num_classes,
        in_channels=args.in_channels,
        spatial_dims=len(size),
    )
    with torch.device("meta"):  # shapes only: no memory, no initialisation cost
        net = AutoDeepLabNet(genotype, config)
    params = count_parameters(net)
    multiply_adds = count_multiply_adds(net, (1, config.in_channels, *size))
    report = {
        "genotype": genotype.to_dict(),
        "filter_multiplier": filters,
        "num_classes": args.num_classes,
        "in_channels": args.in_channels,
        "spatial_dims": len(size),
        "input_size": size,
        "output_stride": net.output_stride,
        "params": params,
        "multiply_adds": multiply_adds,
    }
    if args.json:
        print(json.dumps(report))
        return 0
    shown = "x".join(str(n) for n in size)
    print(f"genotype       {genotype.short()}")
    print(f"network        F={filters}, {args.num_classes} classes, final output stride {net.output_stride}")
    print(f"parameters     {params:,} ({format_count(params)})")
    print(f"multiply-adds  {multiply_adds:,} ({format_count(multiply_adds)}) at {shown}, batch 1")
    return 0


def _dints_info(arch: DintsArch, args: argparse.Namespace) -> int:
    """``info`` of a DiNTS architecture: its found network at ``--channels`` (and its own dimensions)."""
    if args.variant is not None or args.filter_multiplier is not None:
        raise ConfigError(
            "--variant/--filter-multiplier: Auto-DeepLab widths; a DiNTS network takes --channels"
        )
    size, dims = list(args.input_size), op_set_dims(arch.op_set)
    if len(size) != dims:
        raise ConfigError(f"--input-size: a {dims}D DiNTS architecture ({arch.op_set}) needs {dims} sizes")
    channels = args.channels or DintsNetworkConfig.channels
    shape = dints_shape(arch, channels, DintsNetworkConfig.norm, dims, args.in_channels, args.num_classes)
    with torch.device("meta"):
        net = DintsNet(arch, shape)
    params = count_parameters(net)
    multiply_adds = count_multiply_adds(net, (1, args.in_channels, *size))
    report = {"arch": arch.to_dict(), "channels": channels, "num_classes": args.num_classes}
    report |= {"in_channels": args.in_channels, "input_size": size, "params": params}
    report["multiply_adds"] = multiply_adds
    if args.json:
        print(json.dumps(report))
        return 0
    print(f"architecture   {arch.short()}")
    print(f"network        DiNTS, channels {channels} at depth 0, {args.num_classes} classes")
    print(f"parameters     {params:,} ({format_count(params)})")
    shown = "x".join(str(n) for n in size)
    print(f"multiply-adds  {multiply_adds:,} ({format_count(multiply_adds)}) at {shown}, batch 1")
    return 0
