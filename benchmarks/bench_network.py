"""Auto-DeepLab-S training and inference throughput on the CPU at small sizes.

Builds the found network for the paper's genotype (``--variant S``: F = 20, or ``--filter-multiplier``)
and times, after ``--warmup`` untimed iterations:

- a training step: forward in training mode (BN batch statistics, drop path on at full progress),
  cross-entropy against random labels, backward, SGD step with momentum;
- inference: forward in eval mode under ``torch.inference_mode``.

Prints one line per measurement and appends one JSON line per measurement to
``benchmarks/results_network.jsonl`` (date, machine, load average, torch version and threads, the exact
command, sizes, parameters, multiply-adds per image, images per second, seconds per iteration).

    python benchmarks/bench_network.py --variant S --train-size 161 161 --infer-size 360 480 --iters 3
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
from torch import nn

from autodeeplab.fileio import atomic_write_text
from autodeeplab.nets.complexity import count_multiply_adds, count_parameters
from autodeeplab.nets.network import VARIANTS, build_network

REPO = Path(__file__).resolve().parents[1]
DEFAULT_OUTPUT = REPO / "benchmarks" / "results_network.jsonl"


def time_iterations(step, warmup: int, iters: int) -> float:
    """Mean seconds per call of ``step()`` over ``iters`` calls after ``warmup`` untimed ones."""
    for _ in range(warmup):
        step()
    start = time.perf_counter()
    for _ in range(iters):
        step()
    return (time.perf_counter() - start) / iters


def train_step_fn(net: nn.Module, batch: int, size: tuple[int, int], num_classes: int):
    """A closure doing one SGD step on a fixed random batch ``[batch, 3, H, W]``."""
    optimizer = torch.optim.SGD(net.parameters(), lr=1e-3, momentum=0.9, weight_decay=4e-5)
    images = torch.randn(batch, 3, *size)
    labels = torch.randint(0, num_classes, (batch, *size))
    net.train()
    net.set_drop_path_progress(1.0)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        loss = nn.functional.cross_entropy(net(images), labels)
        loss.backward()
        optimizer.step()

    return step


def infer_step_fn(net: nn.Module, batch: int, size: tuple[int, int]):
    """A closure running one eval-mode forward on a fixed random batch ``[batch, 3, H, W]``."""
    images = torch.randn(batch, 3, *size)
    net.eval()

    def step() -> None:
        with torch.inference_mode():
            net(images)

    return step


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    width = parser.add_mutually_exclusive_group()
    width.add_argument("--variant", choices=sorted(VARIANTS), default="S")
    width.add_argument("--filter-multiplier", type=int, help="overrides --variant")
    parser.add_argument("--num-classes", type=int, default=19)
    parser.add_argument("--drop-path-keep-prob", type=float, default=0.9, help="for the training step")
    parser.add_argument("--train-size", type=int, nargs=2, default=[161, 161], metavar=("H", "W"))
    parser.add_argument("--train-batch", type=int, default=2)
    parser.add_argument("--infer-size", type=int, nargs=2, default=[360, 480], metavar=("H", "W"))
    parser.add_argument("--infer-batch", type=int, default=1)
    parser.add_argument("--iters", type=int, default=3, help="timed iterations per measurement")
    parser.add_argument("--warmup", type=int, default=1, help="untimed iterations first")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch intra-op threads")
    parser.add_argument("--skip", choices=["train", "infer"], help="leave one measurement out")
    parser.add_argument("--note", default="", help="free text stored with the figures (e.g. CPU contention)")
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT, help="JSON-lines file to append to")
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    filters = args.filter_multiplier or VARIANTS[args.variant]
    net = build_network(
        "paper",
        filter_multiplier=filters,
        num_classes=args.num_classes,
        drop_path_keep_prob=args.drop_path_keep_prob,
    )
    params = count_parameters(net)
    command = "python " + " ".join(shlex.quote(a) for a in [os.path.relpath(__file__, REPO), *sys.argv[1:]])
    plans = {
        "train": (args.train_batch, tuple(args.train_size), train_step_fn),
        "infer": (args.infer_batch, tuple(args.infer_size), infer_step_fn),
    }
    records = []
    for mode, (batch, size, make) in plans.items():
        if mode == args.skip:
            continue
        step = make(net, batch, size, args.num_classes) if mode == "train" else make(net, batch, size)
        seconds = time_iterations(step, args.warmup, args.iters)
        multiply_adds = count_multiply_adds(net, (1, 3, *size))
        rate = batch / seconds
        print(
            f"{mode:5s} F={filters} batch {batch} at {size[0]}x{size[1]}: {seconds:.3f} s/iter, "
            f"{rate:.2f} images/s ({multiply_adds / 1e9:.2f}B multiply-adds per image forward)"
        )
        records.append(
            {
                "benchmark": f"network_{mode}",
                "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                "machine": machine_info(),
                "load_average_1min": round(os.getloadavg()[0], 2),
                "torch": torch.__version__,
                "threads": args.threads,
                "command": command,
                "genotype": "paper",
                "filter_multiplier": filters,
                "num_classes": args.num_classes,
                "batch_size": batch,
                "input_size": list(size),
                "params": params,
                "multiply_adds_per_image": multiply_adds,
                "iters_timed": args.iters,
                "seconds_per_iter": round(seconds, 4),
                "images_per_second": round(rate, 3),
                "note": args.note,
            }
        )
    existing = args.output.read_text(encoding="utf-8") if args.output.is_file() else ""
    atomic_write_text(args.output, existing + "".join(json.dumps(r) + "\n" for r in records))
    return 0


if __name__ == "__main__":
    sys.exit(main())
