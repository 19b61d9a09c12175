"""Volumes: the 3D supernet's saved activations, and the 3D found network's throughput.

- ``memory``: activations kept for the backward of a weight step of the Auto-DeepLab supernet in 3D
  (default F=8, L=12, B=5, 3 classes, one channel, the exact fast path), counted exactly with the
  saved-tensor hooks as in 2D, on one ``1×1×S³`` volume (default S=96).
- ``train`` / ``infer``: the paper genotype's 3D found network with the ``hippocampus`` training preset's
  settings (F=8, slim heads, the OS2 stage): a training step (Dice + cross-entropy, SGD) on a batch of ``S³``
  patches and an eval-mode forward under ``torch.inference_mode``, in voxels per second; in the default
  memory layout and in ``channels_last_3d`` (what training and inference use on a CPU), and with every
  kernel tap against only those that can reach the map (``ops.primitives.CroppedConv3d``), and with the
  library's depthwise backward against the one as forward convolutions (``ops.depthwise``), side by side.

Prints one line per measurement and appends JSON lines to ``benchmarks/results_volumes.jsonl``.

    python benchmarks/bench_volumes.py --memory-size 96 --size 64 --batch 2 --threads 2
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shlex
import sys
import time
from pathlib import Path

import torch
from machine_info import machine_info  # benchmarks/machine_info.py (this script's folder)

from autodeeplab.config.settings import load_config
from autodeeplab.fast.supernet import build_supernet
from autodeeplab.fileio import atomic_write_text
from autodeeplab.nets.network import build_network
from autodeeplab.ops.depthwise import cheap_depthwise_backward
from autodeeplab.ops.losses import DiceCELoss
from autodeeplab.search.saved_memory import count_saved
from autodeeplab.space.autodeeplab.supernet import SearchSpaceConfig
from autodeeplab.train.config import TrainConfig

REPO = Path(__file__).resolve().parents[1]
DEFAULT_OUTPUT = REPO / "benchmarks" / "results_volumes.jsonl"
GIB = 2**30


def supernet_memory(size: int, filters: int, layers: int, blocks: int, classes: int) -> dict:
    space = SearchSpaceConfig(filter_multiplier=filters, num_layers=layers, num_blocks=blocks, spatial_dims=3)
    torch.manual_seed(0)
    model = build_supernet(space, classes, in_channels=1)
    x = torch.randn(1, 1, size, size, size)
    y = torch.randint(0, classes, (1, size, size, size))
    start = time.perf_counter()
    saved = sum(r.nbytes for r in count_saved(model, x, y, DiceCELoss(), "weight"))
    seconds = time.perf_counter() - start
    print(
        f"memory: 3D supernet F={filters} L={layers} B={blocks} at 1x1x{size}^3: "
        f"{saved / GIB:.3f} GiB saved for the weight step's backward (forward {seconds:.1f} s)"
    )
    shape = {"filter_multiplier": filters, "num_layers": layers, "num_blocks": blocks}
    return {
        "benchmark": "supernet3d_saved",
        "input_size": [1, 1, size, size, size],
        **shape,
        "saved_bytes": saved,
    }


def time_it(step, warmup: int, iters: int) -> float:
    for _ in range(warmup):
        step()
    start = time.perf_counter()
    for _ in range(iters):
        step()
    return (time.perf_counter() - start) / iters


def network_throughput(size: int, batch: int, classes: int, warmup: int, iters: int) -> list[dict]:
    records = []
    variants = [
        ("contiguous", "cropped", "as_convs"),
        ("channels_last_3d", "full", "library"),
        ("channels_last_3d", "cropped", "library"),
        ("channels_last_3d", "cropped", "as_convs"),
    ]
    for layout, kernels, depthwise in variants:
        records += _throughput_in(layout, kernels, depthwise, size, batch, classes, warmup, iters)
    return records


def _throughput_in(
    layout: str, kernels: str, depthwise: str, size: int, batch: int, classes: int, warmup: int, iters: int
) -> list[dict]:
    model_settings = load_config(TrainConfig, preset="hippocampus").model
    memory_format = torch.channels_last_3d if layout == "channels_last_3d" else torch.contiguous_format
    torch.manual_seed(0)
    net = build_network("paper", model_settings, num_classes=classes, in_channels=1)
    if depthwise == "library":  # the library's depthwise backward (autodeeplab.ops.depthwise)
        cheap_depthwise_backward(net, enable=False)
    if kernels == "full":  # plain nn.Conv3d: every tap computed, also those reading only padding
        for module in net.modules():
            if isinstance(module, torch.nn.Conv3d):
                module.__class__ = torch.nn.Conv3d
    net.to(memory_format=memory_format)
    x = torch.randn(batch, 1, size, size, size).contiguous(memory_format=memory_format)
    y = torch.randint(0, classes, (batch, size, size, size))
    loss_fn, optimizer = DiceCELoss(), torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9)

    def train_step() -> None:
        optimizer.zero_grad(set_to_none=True)
        loss_fn(net(x), y).backward()
        optimizer.step()

    def infer_step() -> None:
        with torch.inference_mode():
            net(x)

    records = []
    params = sum(p.numel() for p in net.parameters())
    for mode, step in (("train", train_step), ("infer", infer_step)):
        net.train(mode == "train")
        seconds = time_it(step, warmup, iters)
        voxels = batch * size**3 / seconds
        print(
            f"{mode}: 3D found network ({params / 1e6:.2f}M parameters, {layout}, {kernels} kernels, "
            f"depthwise backward {depthwise}) "
            f"batch {batch} at "
            f"{size}^3: {seconds:.3f} s/iter, {voxels / 1e6:.2f}M voxels/s"
        )
        records.append(
            {
                "benchmark": f"network3d_{mode}",
                "layout": layout,
                "kernels": kernels,
                "depthwise_backward": depthwise,
                "input_size": [batch, 1, size, size, size],
                "params": params,
                "seconds_per_iter": seconds,
                "voxels_per_second": voxels,
            }
        )
    return records


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--memory-size", type=int, default=96, help="S of the 1x1xS^3 supernet count (0: skip)"
    )
    parser.add_argument("--filter-multiplier", type=int, default=8)
    parser.add_argument("--layers", type=int, default=12)
    parser.add_argument("--blocks", type=int, default=5)
    parser.add_argument("--size", type=int, default=64, help="S of the found network's S^3 patches (0: skip)")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--classes", type=int, default=3)
    parser.add_argument("--iters", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--note", default="", help="free text stored with the figures (e.g. CPU contention)")
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    records = []
    if args.size:
        records += network_throughput(args.size, args.batch, args.classes, args.warmup, args.iters)
    if args.memory_size:
        f, layers, blocks = args.filter_multiplier, args.layers, args.blocks
        records.append(supernet_memory(args.memory_size, f, layers, blocks, args.classes))
    command = "python " + " ".join(shlex.quote(a) for a in [os.path.relpath(__file__, REPO), *sys.argv[1:]])
    common = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": machine_info(),
        "load_average_1min": round(os.getloadavg()[0], 2),
        "torch": torch.__version__,
        "threads": args.threads,
        "command": command,
        "note": args.note,
    }
    old = args.output.read_text() if args.output.exists() else ""
    lines = "".join(json.dumps({**common, **r}) + "\n" for r in records)
    atomic_write_text(args.output, old + lines)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
