"""Decoded + augmented samples per second on CamVid: is the input pipeline fast enough to feed the model?

Reads the CamVid train split through ``TrainTransform`` (random scale 0.5–2, crop, flip, jitter) and a
``DataLoader`` with each requested worker count and times ``--samples`` samples from the creation of the
iterator (worker start-up included, as at the start of every epoch; without it, batches the workers prefetched
during the wait for the first one would inflate the rate). Prints one line per setting and appends one JSON
line per figure to ``benchmarks/results_data.jsonl`` (date, machine, torch version, load average, command).

    python benchmarks/bench_data.py --workers 0 2 --samples 160
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
from torch.utils.data import DataLoader

from autodeeplab.data.registry import build_dataset
from autodeeplab.data.transforms import TrainTransform
from autodeeplab.fileio import atomic_write_text

REPO = Path(__file__).resolve().parents[1]
DEFAULT_ROOT = REPO.parent / "shared" / "data" / "camvid"
DEFAULT_OUTPUT = REPO / "benchmarks" / "results_data.jsonl"


def measure(dataset, workers: int, batch_size: int, samples: int) -> tuple[float, float]:
    """(samples per second over ``samples`` samples, seconds until the first batch), start-up included."""
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=workers, drop_last=True)
    done, first, start = 0, 0.0, time.perf_counter()
    for images, _ in loader:
        done += images.shape[0]
        first = first or time.perf_counter() - start
        if done >= samples:
            break
    return done / (time.perf_counter() - start), first


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-root", type=Path, default=DEFAULT_ROOT, help="CamVid (SegNet layout)")
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 2], help="DataLoader worker counts")
    parser.add_argument("--samples", type=int, default=160, help="samples timed per setting")
    parser.add_argument("--crop", type=int, default=321, help="square crop side (the paper's search crop)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--jitter", type=float, default=0.1)
    parser.add_argument("--note", default="", help="free text stored with the figures (e.g. CPU contention)")
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT, help="JSON-lines file to append to")
    args = parser.parse_args(argv)
    if not args.data_root.is_dir():
        print(f"bench_data: CamVid not found at {args.data_root}", file=sys.stderr)
        return 2

    transform = TrainTransform(args.crop, scale_range=(0.5, 2.0), flip=True, jitter=args.jitter)
    dataset = build_dataset("camvid", args.data_root, "train", transform, seed=0)
    command = "python " + " ".join(shlex.quote(a) for a in [os.path.relpath(__file__, REPO), *sys.argv[1:]])
    records = []
    for workers in args.workers:
        rate, first = measure(dataset, workers, args.batch_size, args.samples)
        print(
            f"camvid train, crop {args.crop}, batch {args.batch_size}, {workers} workers: "
            f"{rate:.1f} samples/s (first batch after {first:.2f} s)"
        )
        records.append(
            {
                "benchmark": "data_pipeline",
                "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                "machine": machine_info(),
                "load_average_1min": round(os.getloadavg()[0], 2),
                "torch": torch.__version__,
                "command": command,
                "dataset": "camvid/train",
                "crop": args.crop,
                "batch_size": args.batch_size,
                "jitter": args.jitter,
                "workers": workers,
                "samples_timed": args.samples,
                "samples_per_second": round(rate, 1),
                "first_batch_seconds": round(first, 2),
                "note": args.note,
            }
        )
    existing = args.output.read_text(encoding="utf-8") if args.output.is_file() else ""
    atomic_write_text(args.output, existing + "".join(json.dumps(r) + "\n" for r in records))
    return 0


if __name__ == "__main__":
    sys.exit(main())
