"""Throughput of search and training with 1 and N processes (issue 15): the scaling efficiency.

Each case runs a short and a long run of the same command and takes the difference, so start-up (imports,
data, the process group) and the per-epoch validation drop out: seconds per step of the steady state. One
process uses every thread given (``--threads``); N processes under ``torchrun --standalone`` share them
(``threads / N`` each), so on a CPU the comparison is the same cores used two ways. Efficiency = (one
process's seconds per step) / (N processes' seconds per step) for the same global batch. Appends one JSON
line per case to ``benchmarks/results_distributed.jsonl``.

    python benchmarks/bench_distributed.py                      # 1 vs 2 processes, 2 threads in all
    python benchmarks/bench_distributed.py --procs 1 4 --threads 16 --device cuda   # on a GPU node
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from machine_info import machine_info

REPO = Path(__file__).resolve().parents[1]
DEFAULT_OUTPUT = REPO / "benchmarks" / "results_distributed.jsonl"

# The `cpu` search preset (synthetic 64² crops, L=4, B=3, F=4, batches of 8) and the `synthetic` training
# preset (the tiny found network, batches of 8): `autodeeplab run`'s two phases.
SEARCH = ["search", "--preset", "cpu", "--set", "epochs=2", "--set", "arch_start_epoch=1"]
SEARCH += ["--set", "data.synthetic_train_samples=512"]  # 32 steps an epoch: steps_per_epoch is a cap
TRAIN = ["train", "--preset", "synthetic", "--arch", "paper", "--set", "data.eval_split=null"]
LENGTHS = {"search": ("steps_per_epoch", 4, 24), "train": ("iterations", 20, 60)}


def run_once(kind: str, procs: int, threads: int, length: int, device: str, out: Path) -> float:
    """Wall seconds of one run of ``kind`` with ``procs`` processes and ``length`` steps."""
    key = LENGTHS[kind][0]
    args = [*(SEARCH if kind == "search" else TRAIN), "--set", f"{key}={length}", "--set", f"device={device}"]
    args += ["-o", str(out), "-q"]
    if kind == "train":
        args += ["--set", f"checkpoint_every={length}"]
    if procs == 1:
        command = [sys.executable, "-m", "autodeeplab", *args]
    else:
        command = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node",
            str(procs),
        ]
        command += ["-m", "autodeeplab", *args]
    env = {**os.environ, "OMP_NUM_THREADS": str(max(1, threads // procs))}
    start = time.perf_counter()
    done = subprocess.run(command, env=env, capture_output=True, text=True, cwd=REPO)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{done.stdout[-2000:]}{done.stderr[-2000:]}")
    return seconds


def steady_seconds(kind: str, procs: int, threads: int, device: str) -> tuple[float, int]:
    """Seconds per step (weight step for the search: the long run adds ``2 × Δ`` weight steps and ``Δ``
    architecture steps, counted as ``2 × Δ`` iterations of the search) and the steps timed."""
    _, short, long = LENGTHS[kind]
    with tempfile.TemporaryDirectory() as tmp:
        t_short = run_once(kind, procs, threads, short, device, Path(tmp) / "short")
        t_long = run_once(kind, procs, threads, long, device, Path(tmp) / "long")
    steps = (long - short) * (2 if kind == "search" else 1)
    return (t_long - t_short) / steps, steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--procs", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--threads", type=int, default=2, help="CPU threads in all (split over processes)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--kinds", nargs="+", default=["search", "train"], choices=["search", "train"])
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT)
    args = parser.parse_args()
    info = machine_info(args.device)
    for kind in args.kinds:
        base = None
        for procs in args.procs:
            per_step, steps = steady_seconds(kind, procs, args.threads, args.device)
            base = per_step if base is None else base
            record = {
                "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
                "kind": kind,
                "procs": procs,
                "threads": args.threads,
                "device": args.device,
                "seconds_per_step": round(per_step, 4),
                "steps_timed": steps,
                "efficiency_vs_first": round(base / per_step, 3),
                "command": " ".join(["python", "benchmarks/bench_distributed.py", *sys.argv[1:]]),
                "machine": info,
            }
            print(
                f"{kind:6s} {procs} process(es), {args.threads} threads: {per_step:.3f} s/step "
                f"(efficiency {base / per_step:.2f} against {args.procs[0]})"
            )
            with open(args.output, "a", encoding="utf-8") as f:
                f.write(json.dumps(record) + "\n")


if __name__ == "__main__":
    main()
