"""DiNTS supernet: activations kept for the backward, and time per search iteration.

The setting of the issue's reference figure (MONAI's supernet keeps ~9.2 GiB fp32 at 1×1×96³): DiNTS's search
width (``channels`` 32 at depth 0 = MONAI's ``channel_mul`` 0.5), 12 blocks, 4 depths, 3 classes, one channel,
instance norm. Saved storages are counted exactly with the saved-tensor hooks
(:func:`autodeeplab.search.estimate.count_saved`): for the weight step (architecture logits frozen) and the
architecture step (weights frozen), as in the 2D figures. Every activation of this network scales with the
voxels of its own depth, and at sizes divisible by 16 (the deepest stride) every depth's voxels scale by
``(S / S0)^3`` exactly, so a count at ``--count-size`` (default 48) is scaled to ``--size`` (default 96);
``--count-size 96`` counts at the full size (about 10 GiB of RAM).

``--time``: one full search iteration (weight step + architecture step with the DiNTS terms) at
``--time-size``, median of ``--repeats`` after one warm-up, for the lean supernet (shared ReLU, weights folded
into the norms, pseudo-3D middle maps recomputed), the same without recomputation, and the reference
evaluation, interleaved.

Prints one line per measurement and appends JSON lines to ``benchmarks/results_dints.jsonl``.

    python benchmarks/bench_dints.py --size 96 --count-size 48 --time --time-size 64 --threads 2
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shlex
import statistics
import sys
import time
from pathlib import Path

import torch
from machine_info import machine_info  # benchmarks/machine_info.py (this script's folder)

from autodeeplab.ops.losses import DiceCELoss
from autodeeplab.search.loop import arch_step, weight_step
from autodeeplab.search.saved_memory import count_saved
from autodeeplab.space.dints.network import DintsShape
from autodeeplab.space.dints.supernet import DintsSupernet

REPO = Path(__file__).resolve().parents[1]
DEFAULT_OUTPUT = REPO / "benchmarks" / "results_dints.jsonl"
GIB = 2**30
MONAI_GIB = {"fp32": 9.2, "bf16": 4.9}
"""The issue's figure for MONAI's supernet at this setting (saved activations, 1×1×96³)."""


VARIANTS = {"lean": (True, True), "lean_no_recompute": (True, False), "reference": (False, False)}
"""Name → (lean, recompute) of the supernet's evaluation."""


def build(args: argparse.Namespace, size: int, variant: str) -> DintsSupernet:
    torch.manual_seed(0)
    shape = DintsShape(args.depths, args.blocks, args.channels, 3, "instance", 1, args.classes)
    lean, recompute = VARIANTS[variant]
    return DintsSupernet(shape, probe_size=(size,) * 3, lean=lean, recompute=recompute)


def memory(args: argparse.Namespace) -> dict:
    """Saved bytes of each step, for the lean supernet and the reference evaluation."""
    if args.count_size % 16 or args.size % args.count_size:
        sys.exit("--count-size must be a multiple of 16 that divides --size (exact scaling)")
    x = torch.randn(1, 1, *(args.count_size,) * 3)
    y = torch.randint(0, args.classes, (1, *(args.count_size,) * 3))
    scale = (args.size / args.count_size) ** 3
    how = "counted" if scale == 1 else f"counted at {args.count_size}^3, scaled"
    result = {}
    for name in VARIANTS:
        model = build(args, args.count_size, name)
        for step in ("weight", "arch"):
            start = time.perf_counter()
            records = count_saved(model, x, y, DiceCELoss(), step, args.precision)
            saved = sum(r.nbytes for r in records) * scale
            result[f"saved_gib_{name}_{step}_step"] = round(saved / GIB, 3)
            print(
                f"memory: DiNTS supernet ({name}, {args.precision}) {args.depths} depths x {args.blocks} "
                f"blocks, channels {args.channels}, 1x1x{args.size}^3 ({how}): {saved / GIB:.3f} GiB "
                f"saved for the {step} step's backward (forward {time.perf_counter() - start:.1f} s)",
                flush=True,
            )
    for name in VARIANTS:
        worst = max(result[f"saved_gib_{name}_{step}_step"] for step in ("weight", "arch"))
        monai = MONAI_GIB[args.precision]
        ratio = worst / monai
        print(f"memory: {name} {worst:.3f} GiB at most, {ratio:.2f}x MONAI's {monai} GiB ({args.precision})")
        result[f"ratio_{name}_to_monai_{args.precision}"] = round(ratio, 3)
    return {"benchmark": "dints_supernet_saved", "precision": args.precision, **result}


def timing(args: argparse.Namespace) -> dict:
    """The lean supernet (the default) and the reference (``lean=False``), iterations interleaved."""
    x = torch.randn(1, 1, *(args.time_size,) * 3)
    y = torch.randint(0, args.classes, (1, *(args.time_size,) * 3))
    runs = {}
    for name in VARIANTS:
        model = build(args, args.time_size, name)
        model.set_search_progress(1, 2, 0)  # the terms at full weight
        weights = torch.optim.SGD(model.weight_parameters(), lr=1e-3, momentum=0.9)
        arch = torch.optim.Adam(model.arch_parameters(), lr=1e-3)
        runs[name] = (model, weights, arch, [])
    loss = DiceCELoss()
    for _ in range(args.repeats + 1):
        for model, weights, arch, seconds in runs.values():
            start = time.perf_counter()
            weight_step(model, x, y, weights, loss, 5.0, "fp32")
            arch_step(model, x, y, arch, loss, "fp32")
            seconds.append(time.perf_counter() - start)
    medians = {name: statistics.median(run[3][1:]) for name, run in runs.items()}
    print(
        f"time: one search iteration (weight + architecture step) at 1x1x{args.time_size}^3: "
        + ", ".join(f"{name} {t:.2f} s" for name, t in medians.items())
    )
    return {
        "benchmark": "dints_search_iteration",
        "size": args.time_size,
        **{f"seconds_{name}": round(t, 3) for name, t in medians.items()},
    }


def decoding(args: argparse.Namespace) -> dict:
    """Decoding time and peak Python memory (tracemalloc) at 4 and 5 depths × 12 blocks, random logits."""
    import tracemalloc

    from autodeeplab.space.dints.decode import decode_arch

    row = {"benchmark": "dints_decode"}
    for depths in (4, 5):
        edges = 3 * depths - 2
        generator = torch.Generator().manual_seed(depths)
        a = torch.randn(12, edges, generator=generator)
        w = torch.randn(12, edges, 5, generator=generator)
        decode_arch(a, w, "dints-3d")  # warm-up: the topology's tables are cached per call, not globally
        times = []
        for _ in range(5):
            start = time.perf_counter()
            decode_arch(a, w, "dints-3d")
            times.append(time.perf_counter() - start)
        tracemalloc.start()
        decode_arch(a, w, "dints-3d")
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        median = statistics.median(times)
        print(
            f"decode: {depths} depths x 12 blocks: {1000 * median:.1f} ms, "
            f"peak {peak / 2**20:.1f} MiB (tracemalloc)"
        )
        row[f"seconds_{depths}_depths"] = round(median, 5)
        row[f"peak_mib_{depths}_depths"] = round(peak / 2**20, 2)
    return row


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", type=int, default=96)
    p.add_argument("--count-size", type=int, default=48)
    p.add_argument("--depths", type=int, default=4)
    p.add_argument("--blocks", type=int, default=12)
    p.add_argument("--channels", type=int, default=32)
    p.add_argument("--classes", type=int, default=3)
    p.add_argument("--time", action="store_true")
    p.add_argument("--time-size", type=int, default=64)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--precision", choices=sorted(MONAI_GIB), default="fp32", help="autocast of the count")
    p.add_argument("--decode-only", action="store_true", help="only the decoding time and memory")
    p.add_argument("--note", default="")
    p.add_argument("--output", type=Path, default=DEFAULT_OUTPUT)
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    common = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": "python " + shlex.join(sys.argv),
        "commit": os.popen(f"git -C {REPO} rev-parse --short HEAD").read().strip(),
        "threads": torch.get_num_threads(),
        "setting": {k: getattr(args, k) for k in ("size", "depths", "blocks", "channels", "classes")},
        "machine": machine_info(),
        "note": args.note,
    }
    rows = [decoding(args)] if args.decode_only else [decoding(args), memory(args)]
    if args.time and not args.decode_only:
        rows.append(timing(args))
    with args.output.open("a") as f:
        for row in rows:
            f.write(json.dumps({**common, **row}) + "\n")


if __name__ == "__main__":
    main()
