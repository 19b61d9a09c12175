"""Operator dispatches of a search's steps, for ``search --estimate`` and ``benchmarks/bench_search.py``.

One weight step and one architecture step are run (after one warm-up step of each, which creates the
optimizers' state) under :func:`~autodeeplab.fast.dispatch.count_dispatches` on random data. The kernel
counts barely depend on the crop (only the slices that trim upsampled maps to odd sizes and their backward
do, about 1%: tested), so they are taken at a small one; the FLOPs are scaled to the target crop by its pixels
(approximate where odd sizes round).
"""

from __future__ import annotations

from typing import Any

import torch

from autodeeplab.fast.dispatch import DEFAULT_FLOP_RATE, DEFAULT_LAUNCH_SECONDS, count_dispatches
from autodeeplab.ops.losses import make_loss
from autodeeplab.search.config import SearchConfig
from autodeeplab.search.loop import arch_step, make_optimizers, weight_step
from autodeeplab.space.contract import SearchSpace


def count_search_steps(
    model: SearchSpace,
    config: SearchConfig,
    device: torch.device,
    shape: tuple[int, ...],
    classes: int,
    flops: bool = True,
) -> dict[str, dict[str, Any]]:
    """``{"weight": ..., "arch": ...}``: :meth:`DispatchCounts.summary` of each step on a batch of
    ``config.batch_size`` samples of ``shape`` ``(C, *S)``. The model's weights and α/β move (two steps of
    each kind): call it on a model whose values do not matter, or on a copy."""
    weight_opt, arch_opt, _ = make_optimizers(model, config)
    images = torch.randn(config.batch_size, *shape, device=device)
    masks = torch.randint(0, classes, (config.batch_size, *shape[1:]), device=device)
    criterion = make_loss("dice_ce" if len(shape) == 4 else "ce", 255)
    precision = config.execution.precision

    def w_step() -> None:
        weight_step(model, images, masks, weight_opt, criterion, config.grad_clip, precision)

    def a_step() -> None:
        arch_step(model, images, masks, arch_opt, criterion, precision)

    w_step(), a_step()  # the optimizers' state exists from the second step on
    return {
        "weight": count_dispatches(w_step, flops).summary(),
        "arch": count_dispatches(a_step, flops).summary(),
    }


def format_dispatches(
    counts: dict[str, dict[str, Any]],
    flop_scale: float = 1.0,
    launch_seconds: float = DEFAULT_LAUNCH_SECONDS,
    flop_rate: float = DEFAULT_FLOP_RATE,
) -> list[str]:
    """Lines for the estimate: dispatches per step by class, and the GPU floor model of one iteration
    (kernels × ``launch_seconds`` + FLOPs × ``flop_scale`` / ``flop_rate``)."""
    lines = []
    for name, c in (("weight step", counts["weight"]), ("architecture step", counts["arch"])):
        lines.append(
            f"  operator dispatches, {name}: {c['dispatches']:,} ({c['kernels']:,} kernels, "
            f"{c['views']:,} views, {c['allocs']:,} allocations, {c['syncs']} host syncs)"
        )
    kernels = counts["weight"]["kernels"] + counts["arch"]["kernels"]
    gflop = (counts["weight"]["gflop"] + counts["arch"]["gflop"]) * flop_scale
    launch, compute = kernels * launch_seconds, gflop * 1e9 / flop_rate
    lines.append(
        f"  GPU floor per iteration: {kernels:,} launches x {launch_seconds * 1e6:g} us = {launch:.2f} s "
        f"+ {gflop:,.0f} GFLOP at {flop_rate / 1e12:g} TFLOP/s = {compute:.2f} s (a model, not a measurement)"
    )
    # What the floor is and is not: on an H200 (2026-12-04) eager steps took 6.8x it (host-bound, ~34 us
    # an operator) and steps replayed from CUDA graphs 1.04x it, which may be a coincidence
    # (benchmarks/README.md, "GPU").
    lines.append(
        "  (kernels x the cost of one bare eager launch + FLOPs; measured on an H200: eager steps 6.8x "
        "this floor, steps replayed from CUDA graphs with execution.capture_steps about 1x)"
    )
    return lines
