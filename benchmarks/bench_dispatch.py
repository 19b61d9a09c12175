"""Operator dispatches of the search supernet's steps (issue 16): what a GPU pays in kernel launches.

Counts every operator below autograd (forward, backward and optimizer) of one weight step and one
architecture step of each variant of ``bench_search.py`` (after one warm-up step of each), by class (kernels,
views, allocations, host syncs) and by operator, and the FLOPs of convolutions and matrix products. The
counts are deterministic and the same on any machine kind up to backend choices; the crop changes only the
slices that trim odd sizes (about 1%). Appends one JSON line per variant to
``benchmarks/results_dispatch.jsonl`` and prints a table with the GPU floor model of
:func:`autodeeplab.fast.dispatch.gpu_seconds`.

    python benchmarks/bench_dispatch.py --variants reference exact          # the paper's F=8, L=12 at 129
    python benchmarks/bench_dispatch.py --size 65 --launch-us 4.2 --tflops 60  # a given GPU model
    python benchmarks/bench_dispatch.py --device cuda --calibrate  # GPU counts, calibrated model

``--calibrate`` (CUDA) measures the model's two constants on the device first: the seconds per launch of a
tiny kernel (20,000 in-place adds on one number, synchronised once) and the FLOP rate of a 4096² matmul in
the run's precision (fp32: TF32 off, as the search runs).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shlex
import sys
from pathlib import Path

from bench_search import VARIANTS, _setup, append_line
from machine_info import machine_info

from autodeeplab.fast.dispatch import DEFAULT_FLOP_RATE, DEFAULT_LAUNCH_SECONDS

REPO = Path(__file__).resolve().parents[1]
DEFAULT_OUTPUT = REPO / "benchmarks" / "results_dispatch.jsonl"


def count_variant(spec: dict) -> dict:
    from autodeeplab.search.dispatch_probe import count_search_steps

    torch, model, images, _, config, device = _setup(spec)
    config.batch_size = spec["batch"]
    counts = count_search_steps(model, config, device, tuple(images.shape[1:]), spec["classes"])
    return {"torch": torch.__version__, **counts}


def calibrate(device: str) -> tuple[float, float]:
    """(microseconds per eager kernel launch, TFLOP/s of a large fp32 matmul) measured on ``device``.

    The first is one eager ``add_`` on a one-element tensor: the host's dispatch and the launch, the
    least any eager operator costs (:func:`graph_kernel_us` gives the same kernel replayed from a graph)."""
    import time

    import torch

    x = torch.zeros(1, device=device)
    for _ in range(100):  # warm-up
        x.add_(1)
    torch.cuda.synchronize(device)
    start, launches = time.perf_counter(), 20000
    for _ in range(launches):
        x.add_(1)
    torch.cuda.synchronize(device)
    launch_us = (time.perf_counter() - start) / launches * 1e6
    a = torch.randn(4096, 4096, device=device)
    b = torch.randn(4096, 4096, device=device)
    a @ b
    torch.cuda.synchronize(device)
    start, repeats = time.perf_counter(), 20
    for _ in range(repeats):
        a @ b
    torch.cuda.synchronize(device)
    tflops = 2 * 4096**3 * repeats / (time.perf_counter() - start) / 1e12
    return launch_us, tflops


def _graph_kernel_us(device: str) -> float:
    """Microseconds per kernel of a chain of 2,000 one-element ``add_`` kernels replayed from a CUDA graph
    (a lower bound for real kernels: what a step with ``execution.capture_steps`` pays per kernel beyond
    its arithmetic and memory traffic)."""
    import time

    import torch

    x = torch.zeros(1, device=device)
    side = torch.cuda.Stream(device)  # a capture wants its warm-up on a side stream
    side.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(side):
        for _ in range(10):
            x.add_(1)
    torch.cuda.current_stream(device).wait_stream(side)
    graph, kernels = torch.cuda.CUDAGraph(), 2000
    with torch.cuda.graph(graph):
        for _ in range(kernels):
            x.add_(1)
    graph.replay()
    torch.cuda.synchronize(device)
    start, replays = time.perf_counter(), 20
    for _ in range(replays):
        graph.replay()
    torch.cuda.synchronize(device)
    return (time.perf_counter() - start) / (replays * kernels) * 1e6


def graph_kernel_us(device: str) -> float | None:
    """:func:`_graph_kernel_us` in a fresh process (a failed capture can leave a CUDA context unusable, and
    the dispatch counts run in this one), or None with a line saying why."""
    import subprocess

    cmd = [sys.executable, __file__, "_graph_kernel", device]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    except subprocess.TimeoutExpired:
        print("calibrate: no CUDA graph replay measured (it ran over 120 s)")
        return None
    if proc.returncode != 0:
        print(f"calibrate: no CUDA graph replay measured ({proc.stderr.strip().splitlines()[-1:]})")
        return None
    return float(proc.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["_graph_kernel"]:  # graph_kernel_us's child process
        print(_graph_kernel_us(argv[1]))
        return 0
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--variants", nargs="+", default=["reference", "exact"], choices=sorted(VARIANTS))
    parser.add_argument("--size", type=int, default=129)
    parser.add_argument("--filters", type=int, default=8)
    parser.add_argument("--layers", type=int, default=12)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--classes", type=int, default=19)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "--launch-us",
        type=float,
        default=DEFAULT_LAUNCH_SECONDS * 1e6,
        help="cost of one kernel in the GPU model, in us (default: an H200's eager launch, fast/dispatch.py)",
    )
    parser.add_argument(
        "--tflops",
        type=float,
        default=DEFAULT_FLOP_RATE / 1e12,
        help="FLOP rate of the GPU model, in TFLOP/s",
    )
    parser.add_argument(
        "--calibrate",
        action="store_true",
        help="measure --launch-us and --tflops (and a graph-replayed kernel) on the GPU",
    )
    parser.add_argument("--note", default="")
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT)
    args = parser.parse_args(argv)
    calibrated = None
    if args.calibrate:
        graph_us = graph_kernel_us(args.device)  # first, in its own process: this one's context stays clean
        args.launch_us, args.tflops = calibrate(args.device)
        calibrated = {"launch_us": round(args.launch_us, 3), "tflops_fp32_matmul": round(args.tflops, 2)}
        in_graph = ""
        if graph_us is not None:
            calibrated["graph_kernel_us"] = round(graph_us, 3)
            in_graph = f", {graph_us:.2f} us per kernel replayed from a CUDA graph"
        print(
            f"calibrated on {args.device}: {args.launch_us:.2f} us per eager launch{in_graph}, "
            f"{args.tflops:.1f} TFLOP/s"
        )
    command = "python " + " ".join(shlex.quote(a) for a in [os.path.relpath(__file__, REPO), *argv])
    print(
        "| variant | weight step: dispatches / kernels / syncs | arch step: dispatches / kernels / syncs "
        "| iteration kernels | GFLOP | GPU floor per iteration |"
    )
    print("|---|---|---|---|---|---|")
    for variant in args.variants:
        spec = {
            "variant": variant,
            "size": args.size,
            "filters": args.filters,
            "layers": args.layers,
            "batch": args.batch,
            "classes": args.classes,
            "threads": args.threads,
            "device": args.device,
        }
        counts = count_variant(spec)
        w, a = counts["weight"], counts["arch"]
        kernels, gflop = w["kernels"] + a["kernels"], w["gflop"] + a["gflop"]
        floor = kernels * args.launch_us * 1e-6 + gflop / (args.tflops * 1e3)
        print(
            f"| {variant} | {w['dispatches']:,} / {w['kernels']:,} / {w['syncs']} | {a['dispatches']:,} / "
            f"{a['kernels']:,} / {a['syncs']} | {kernels:,} | {gflop:.1f} | {floor:.3f} s "
            f"({args.launch_us:g} us, {args.tflops:g} TFLOP/s) |",
            flush=True,
        )
        record = {
            "kind": "dispatch",
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "spec": spec,
            "machine": machine_info(args.device),
            "command": command,
            "note": args.note,
            "model": {
                "launch_us": args.launch_us,
                "tflops": args.tflops,
                "iteration_floor_s": round(floor, 4),
            },
            "calibrated": calibrated,
            **counts,
        }
        append_line(args.output, json.dumps(record))
    return 0


if __name__ == "__main__":
    sys.exit(main())
