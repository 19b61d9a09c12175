"""Search supernet benchmarks: iteration time and saved-activation bytes for each speed/memory means.

Every measurement runs in a fresh subprocess (so that peak RSS and allocator state belong to it alone),
prints one line and appends one JSON line to ``benchmarks/results_search.jsonl`` with the date, machine,
load average, torch version, thread count and the exact command.

    # a full search iteration (weight step + architecture step), per variant
    python benchmarks/bench_search.py time --size 129 --variants reference exact
    # activations kept for the backward (forward only: counted with saved_tensors_hooks), per variant
    python benchmarks/bench_search.py memory --size 321 --variants reference exact checkpoint bf16
    # how time and memory grow with the crop, F and L
    python benchmarks/bench_search.py scaling --sizes 65 97 129 --filters 4 8 --layers 6 12
    # `autodeeplab search --estimate` against a measurement at the same setting
    python benchmarks/bench_search.py estimate --size 129
    # the recorded figures as markdown tables, and the scaling series as benchmarks/scaling_memory.png
    python benchmarks/bench_search.py table
    python benchmarks/bench_search.py plot

Add ``--device cuda`` on a GPU machine (timings synchronise; ``torch.cuda.max_memory_allocated`` is recorded).
The default setting is the paper's search supernet: F=8, L=12, B=5, 19 classes, batch 2, fp32.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path

from machine_info import machine_info  # benchmarks/machine_info.py (this script's folder)
from search_tables import markdown_tables, scaling_plot, scaling_tables

from autodeeplab.fast.execution import reference_switches  # light: no torch import

REPO = Path(__file__).resolve().parents[1]
DEFAULT_OUTPUT = REPO / "benchmarks" / "results_search.jsonl"
GIB = 2**30

OFF = reference_switches()  # every default-on switch off, contiguous activations
# name -> (execution overrides, search-space overrides, freeze the other parameter group in each step)
VARIANTS: dict[str, tuple[dict, dict, bool]] = {
    "reference": (OFF, {}, True),
    "reference_no_freeze": (OFF, {}, False),
    "batched_nodes": ({**OFF, "batch_node_inputs": True}, {}, True),
    "fused_edges": ({**OFF, "fuse_edges": True}, {}, True),
    "depthwise_flipped_grad": ({**OFF, "fuse_edges": True, "depthwise_flipped_grad": True}, {}, True),
    "shared_relu": ({**OFF, "share_edge_relu": True}, {}, True),
    "pool_without_indices": ({**OFF, "pool_without_indices": True}, {}, True),
    "fold_alpha": ({**OFF, "fold_alpha_into_bn": True}, {}, True),
    "channels_last": ({**OFF, "memory_format": "channels_last"}, {}, True),
    "pointwise_matmul": ({**OFF, "memory_format": "channels_last", "pointwise_as_matmul": True}, {}, True),
    "checkpoint_only": ({**OFF, "checkpoint_cells": True}, {}, True),
    "bf16_only": ({**OFF, "precision": "bf16"}, {}, True),
    "exact": ({}, {}, True),
    "exact_no_repeat": ({"repeat_separable_input": False}, {}, True),
    "exact_batch_groups": ({"groups_in_channels": False}, {}, True),
    "exact_captured": ({"capture_steps": True}, {}, True),
    "bf16_captured": ({"precision": "bf16", "capture_steps": True}, {}, True),
    # fp32 on a GPU in channels-last: fewer kernels (57.4k against 63.3k), which is what a captured step pays
    "channels_last_captured": ({"memory_format": "channels_last", "capture_steps": True}, {}, True),
    "exact_no_freeze": ({}, {}, False),
    "exact_contiguous": ({"memory_format": "contiguous"}, {}, True),
    "exact_unfused": ({"fuse_edges": False}, {}, True),
    "exact_no_flat": ({"flat_edge_weights": False}, {}, True),
    "exact_no_matmul": ({"pointwise_as_matmul": False}, {}, True),
    "exact_no_flipped_grad": ({"depthwise_flipped_grad": False}, {}, True),
    "exact_unbatched_stats": ({"batch_running_stats": False}, {}, True),
    "checkpoint": ({"checkpoint_cells": True}, {}, True),
    "checkpoint_levels01": ({"checkpoint_cells": True, "checkpoint_levels": [0, 1]}, {}, True),
    "bf16_checkpoint_levels01": (
        {"precision": "bf16", "checkpoint_cells": True, "checkpoint_levels": [0, 1]},
        {},
        True,
    ),
    "bf16": ({"precision": "bf16"}, {}, True),
    "bf16_checkpoint": ({"precision": "bf16", "checkpoint_cells": True}, {}, True),
    "fp16": ({"precision": "fp16"}, {}, True),
    "pc2": ({}, {"partial_channels": 2}, True),
    "pc4": ({}, {"partial_channels": 4}, True),
    "pc4_bf16": ({"precision": "bf16"}, {"partial_channels": 4}, True),
}


# -- worker side (runs in a subprocess) -------------------------------------------------------------
def _setup(spec: dict):
    import torch

    from autodeeplab.fast.execution import ExecutionConfig
    from autodeeplab.fast.supernet import build_supernet
    from autodeeplab.search.config import SearchConfig
    from autodeeplab.space.autodeeplab.supernet import SearchSpaceConfig

    torch.set_num_threads(spec["threads"])
    execution, space, _ = VARIANTS[spec["variant"]]
    space = {"filter_multiplier": spec["filters"], "num_layers": spec["layers"], **space}
    config = SearchConfig(space=SearchSpaceConfig(**space), execution=ExecutionConfig(**execution))
    device = torch.device(spec["device"])
    if spec.get("memory_cap_gib"):  # the GPU as if it had only this much: a run that fits completes
        index = device.index if device.index is not None else torch.cuda.current_device()  # it wants one
        total = torch.cuda.get_device_properties(index).total_memory
        torch.cuda.set_per_process_memory_fraction(min(1.0, spec["memory_cap_gib"] * GIB / total), index)
    torch.manual_seed(0)
    model = build_supernet(config.space, spec["classes"], execution=config.execution).to(device)
    size, batch = spec["size"], spec["batch"]
    images = torch.randn(batch, 3, size, size, device=device)
    masks = torch.randint(0, spec["classes"], (batch, size, size), device=device)
    return torch, model, images, masks, config, device


def _unfrozen_step(model, images, masks, optimizer, criterion, grad_clip: float, precision: str) -> float:
    """A step that, like the public implementation, computes gradients for every parameter."""
    from autodeeplab.fast.precision import autocast, backward_and_step

    model.train()
    optimizer.zero_grad(set_to_none=True)
    with autocast(precision, images.device.type):
        loss = criterion(model(images), masks)
    params = [p for group in optimizer.param_groups for p in group["params"]]
    backward_and_step(loss, optimizer, precision, images.device.type, params, grad_clip)
    model.zero_grad(set_to_none=True)  # gradients of the other group are computed, then dropped
    return float(loss.detach())


def worker_time(spec: dict) -> dict:
    from torch import nn

    from autodeeplab.fast.memory import peak_rss_bytes
    from autodeeplab.search.loop import arch_step, make_optimizers, weight_step

    torch, model, images, masks, config, device = _setup(spec)
    weight_opt, arch_opt, _ = make_optimizers(model, config)
    criterion = nn.CrossEntropyLoss()
    freeze = VARIANTS[spec["variant"]][2]
    precision = config.execution.precision
    w_step = weight_step if freeze else _unfrozen_step
    a_step = arch_step if freeze else (lambda m, x, y, o, c, p: _unfrozen_step(m, x, y, o, c, 0.0, p))
    untimed = 1
    if config.execution.capture_steps:  # replayed CUDA graphs: 3 eager warm-up steps, then the capture
        from autodeeplab.search.loop import step_runners

        w_graph, a_graph = step_runners(model, weight_opt, arch_opt, criterion, config)
        w_step = lambda m, x, y, o, c, g, p: w_graph(x, y)  # noqa: E731
        a_step = lambda m, x, y, o, c, p: a_graph(x, y)  # noqa: E731
        untimed = 5

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    times = []
    for _ in range(spec["repeats"] + untimed):  # the first (captured: five) untimed
        sync()
        t0 = time.perf_counter()
        w_step(model, images, masks, weight_opt, criterion, config.grad_clip, precision)
        sync()
        t1 = time.perf_counter()
        a_step(model, images, masks, arch_opt, criterion, precision)
        sync()
        times.append((t1 - t0, time.perf_counter() - t1))
    timed = times[untimed:]
    result = {
        "weight_step_s": round(statistics.median(t[0] for t in timed), 3),
        "arch_step_s": round(statistics.median(t[1] for t in timed), 3),
        "iteration_s": round(statistics.median(sum(t) for t in timed), 3),
        "iteration_min_s": round(min(sum(t) for t in timed), 3),
        "iterations_timed": len(timed),
        "peak_rss_bytes": peak_rss_bytes(),
    }
    if (
        device.type == "cuda"
    ):  # the peak of the whole process: model, optimizer state, warm-up and timed steps
        result["cuda_max_memory_allocated_bytes"] = torch.cuda.max_memory_allocated(device)
        result["cuda_max_memory_allocated_gib"] = round(torch.cuda.max_memory_allocated(device) / GIB, 3)
        result["cuda_max_memory_reserved_bytes"] = torch.cuda.max_memory_reserved(device)
        result["cuda_memory_reserved_end_bytes"] = torch.cuda.memory_reserved(device)  # after the timed steps
    projection = paper_projection(spec, result["weight_step_s"], result["arch_step_s"])
    if projection is not None:
        result["projected_paper_search"] = projection
    return result


def paper_projection(spec: dict, weight_step_s: float, arch_step_s: float) -> dict | None:
    """The paper's full search (40 epochs, 2,975 Cityscapes images in halves, batch 2, architecture steps
    from epoch 20) at these step times, when ``spec`` is the paper's setting (321 crop, batch 2, F=8, L=12);
    steps only: no validation, no data loading. None for any other setting, where it would mislead."""
    from autodeeplab.search.estimate import SearchSchedule, projected_search_seconds

    paper = {"size": 321, "batch": 2, "filters": 8, "layers": 12}
    if any(spec.get(k) != v for k, v in paper.items()):
        return None
    schedule = SearchSchedule()
    seconds = projected_search_seconds(
        weight_step_s, arch_step_s, schedule.steps_per_epoch, schedule.epochs, schedule.arch_start_epoch
    )
    return {
        "hours": round(seconds / 3600, 3),
        "train_images": schedule.train_images,
        "batch_size": schedule.batch_size,
        "epochs": schedule.epochs,
        "arch_start_epoch": schedule.arch_start_epoch,
        "weight_steps_per_epoch": schedule.steps_per_epoch,
        "excludes": "validation, data loading, checkpoints",
    }


def worker_memory(spec: dict) -> dict:
    from torch import nn

    from autodeeplab.fast.memory import SavedTensorCounter, peak_rss_bytes
    from autodeeplab.fast.precision import autocast
    from autodeeplab.search.saved_memory import count_saved, scale_saved_bytes

    calibration, target = spec.get("scaled_from"), spec["size"]
    if (
        calibration
    ):  # count at a small crop, scale each tensor by its resolution's area (autodeeplab.search.estimate)
        spec = {**spec, "size": calibration}
    torch, model, images, masks, config, device = _setup(spec)
    precision = config.execution.precision
    criterion = nn.CrossEntropyLoss()
    result = {}
    for step in ("weight", "arch"):
        if VARIANTS[spec["variant"]][2]:
            records = count_saved(model, images, masks, criterion, step, precision)
        else:  # nothing frozen: what a single forward of the public implementation keeps
            model.train()
            counter = SavedTensorCounter(exclude=[*model.parameters(), *model.buffers()])
            with counter, autocast(precision, device.type):
                criterion(model(images), masks)
            records = counter.records
        total = sum(r.nbytes for r in records)
        if calibration:
            total = scale_saved_bytes(records, calibration, target)
        result[f"saved_bytes_{step}_step"] = total
    result["saved_gib_max"] = round(max(result.values()) / GIB, 3)
    result["peak_rss_bytes"] = peak_rss_bytes()
    return result


def worker_estimate(spec: dict) -> dict:
    import torch

    from autodeeplab.config.settings import load_config
    from autodeeplab.search.config import SearchConfig
    from autodeeplab.search.estimate import estimate_search

    torch.set_num_threads(spec["threads"])
    execution, space, _ = VARIANTS[spec["variant"]]
    overrides = [
        f"space.filter_multiplier={spec['filters']}",
        f"space.num_layers={spec['layers']}",
        f"data.crop_size={spec['size']}",
        f"batch_size={spec['batch']}",
        *[f"execution.{k}={v}" for k, v in execution.items()],
        *[f"space.{k}={v}" for k, v in space.items()],
    ]
    config = load_config(SearchConfig, preset="paper", overrides=overrides)
    e = estimate_search(config, torch.device(spec["device"]), measure_time=spec["repeats"] > 0)
    return {
        "predicted_saved_bytes_weight_step": e.saved_bytes_weight_step,
        "predicted_saved_bytes_arch_step": e.saved_bytes_arch_step,
        "predicted_iteration_s": None if e.iteration_seconds is None else round(e.iteration_seconds, 3),
        "predicted_search_hours": None if e.search_hours is None else round(e.search_hours, 2),
        "steps_per_epoch": e.steps_per_epoch,
    }


WORKERS = {"time": worker_time, "memory": worker_memory, "estimate": worker_estimate}


# -- driver side ------------------------------------------------------------------------------------
def run_worker(kind: str, spec: dict) -> dict:
    """Run one measurement in a fresh interpreter and return its JSON result."""
    env = {**os.environ, "OMP_NUM_THREADS": str(spec["threads"])}
    if spec.get("preload"):  # another allocator for this worker only (e.g. jemalloc), see --preload
        env["LD_PRELOAD"] = spec["preload"]
    cmd = [sys.executable, __file__, "_worker", kind, json.dumps(spec)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=REPO)
    if proc.returncode != 0:
        raise RuntimeError(f"{kind} {spec['variant']} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def record(kind: str, spec: dict, result: dict, command: str, note: str, load_before: float) -> dict:
    import torch

    return {
        "benchmark": f"search_{kind}",
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": machine_info(spec["device"]),
        "load_average_1min_before": round(load_before, 2),
        "load_average_1min": round(os.getloadavg()[0], 2),
        "torch": torch.__version__,
        "command": command,
        **spec,
        "execution": VARIANTS[spec["variant"]][0],
        "space_overrides": VARIANTS[spec["variant"]][1],
        "frozen_other_group": VARIANTS[spec["variant"]][2],
        **result,
        "note": note,
    }


def describe(kind: str, r: dict) -> str:
    head = f"{r['variant']:>22} {r['size']}px F={r['filters']} L={r['layers']} threads={r['threads']}"
    if r.get("preload"):
        head += f" preload={Path(r['preload']).name}"
    load = f"(load {r['load_average_1min']})"
    if kind == "time":
        return (
            f"{head}: iteration {r['iteration_s']:.2f} s (weight {r['weight_step_s']:.2f} + arch "
            f"{r['arch_step_s']:.2f}), peak RSS {r['peak_rss_bytes'] / GIB:.2f} GiB {load}"
        )
    if kind == "memory":
        return (
            f"{head}: saved for backward: weight step {r['saved_bytes_weight_step'] / GIB:.3f} GiB, "
            f"arch step {r['saved_bytes_arch_step'] / GIB:.3f} GiB"
        )
    return f"{head}: {json.dumps({k: v for k, v in r.items() if k.startswith('predicted')})}"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["_worker"]:
        print(json.dumps(WORKERS[argv[1]](json.loads(argv[2]))))
        return 0
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("kind", choices=["time", "memory", "scaling", "estimate", "table", "plot"])
    parser.add_argument("--variants", nargs="+", default=["reference", "exact"], choices=list(VARIANTS))
    parser.add_argument("--size", type=int, default=129, help="square crop side")
    parser.add_argument("--sizes", type=int, nargs="+", default=[65, 97, 129], help="crops for 'scaling'")
    parser.add_argument("--filters", type=int, nargs="+", default=[8], help="F (several for 'scaling')")
    parser.add_argument("--layers", type=int, nargs="+", default=[12], help="L (several for 'scaling')")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--classes", type=int, default=19)
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (and OMP_NUM_THREADS)")
    parser.add_argument("--repeats", type=int, default=3, help="timed iterations after one warm-up")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--no-time", action="store_true", help="'scaling'/'estimate': memory only")
    parser.add_argument(
        "--scaled-from",
        type=int,
        default=0,
        metavar="CROP",
        help="memory: count at this crop and scale per resolution (exact up to odd-size rounding; "
        "see autodeeplab.search.estimate) instead of a full-size forward",
    )
    parser.add_argument("--note", default="", help="free text stored with the figures (e.g. CPU contention)")
    parser.add_argument(
        "--smoke-test",
        action="store_true",
        help="mark the records as a check that the command runs (not a figure; 'table' leaves them out)",
    )
    parser.add_argument(
        "--preload",
        default="",
        metavar="LIB",
        help="run the workers with this shared library preloaded (LD_PRELOAD), e.g. an allocator: "
        "/usr/lib/x86_64-linux-gnu/libjemalloc.so.2 (Debian: apt install libjemalloc2)",
    )
    parser.add_argument(
        "--memory-cap-gib",
        type=float,
        default=0.0,
        metavar="GIB",
        help="CUDA: let the process use at most this much GPU memory (torch.cuda."
        "set_per_process_memory_fraction), so that a completed run shows it fits a card of that size",
    )
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT)
    args = parser.parse_args(argv)
    if args.memory_cap_gib and args.device == "cpu":
        parser.error("--memory-cap-gib: a GPU memory cap; this run is on the CPU")
    if args.preload and not Path(args.preload).is_file():
        parser.error(f"--preload: {args.preload} is not a file")

    if args.kind == "table":
        print(markdown_tables(args.output) + "\n\n" + scaling_tables(args.output))
        return 0
    if args.kind == "plot":
        print(scaling_plot(args.output, args.output.with_name("scaling_memory.png")))
        return 0
    command = "python " + " ".join(shlex.quote(a) for a in [os.path.relpath(__file__, REPO), *argv])
    base = {"batch": args.batch, "classes": args.classes, "threads": args.threads, "device": args.device}
    base["repeats"] = 0 if args.no_time else args.repeats
    if args.scaled_from:
        base["scaled_from"] = args.scaled_from
    if args.smoke_test:
        base["smoke_test"] = True
    if args.preload:
        base["preload"] = args.preload
    if args.memory_cap_gib:
        base["memory_cap_gib"] = args.memory_cap_gib
    jobs: list[tuple[str, dict]] = []
    if args.kind in ("time", "memory"):
        for variant in args.variants:
            spec = {**base, "variant": variant, "size": args.size}
            jobs.append((args.kind, {**spec, "filters": args.filters[0], "layers": args.layers[0]}))
    elif args.kind == "scaling":
        for f in args.filters:
            for layers in args.layers:
                for size in args.sizes:
                    for variant in args.variants:
                        spec = {**base, "variant": variant, "size": size, "filters": f, "layers": layers}
                        spec["series"] = "scaling"
                        timed = {k: v for k, v in spec.items() if k != "scaled_from"}
                        if size <= spec.get("scaled_from", 0):  # a direct count is exact and no dearer
                            spec.pop("scaled_from")
                        jobs.append(("memory", spec))
                        if not args.no_time:
                            jobs.append(("time", timed))
    else:  # estimate: the prediction, then the measurements it predicts
        for variant in args.variants:
            spec = {**base, "variant": variant, "size": args.size}
            spec.update(filters=args.filters[0], layers=args.layers[0])
            jobs += [("estimate", spec), ("memory", spec)] + ([] if args.no_time else [("time", spec)])
    failed = 0
    for kind, spec in jobs:
        load_before = os.getloadavg()[0]
        try:
            measured = run_worker(kind, spec)
        except RuntimeError as error:  # one failed measurement (e.g. out of memory under a cap): the rest run
            failed += 1
            print(f"FAILED: {error}", flush=True)
            continue
        result = record(kind, spec, measured, command, args.note, load_before)
        print(describe(kind, result), flush=True)
        append_line(args.output, json.dumps(result))  # as we go: a long run keeps what it measured
    return 1 if failed else 0


def append_line(path: Path, line: str) -> None:
    """Append one line to ``path`` through an atomic rewrite (a crash never leaves half a file)."""
    from autodeeplab.fileio import atomic_write_text

    old = path.read_text(encoding="utf-8") if path.exists() else ""
    atomic_write_text(path, old + line + "\n")


if __name__ == "__main__":
    sys.exit(main())
