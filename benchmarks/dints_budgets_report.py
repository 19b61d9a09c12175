"""The table of ``benchmarks/dints_budgets.sh``: per memory budget, the search's expected memory and the
decoded network's (fractions of every edge on, from the per-op memory factors that the saved-tensor counter
checks), the decoded network's activations counted on a training batch, its size, and the test Dice.

    python benchmarks/dints_budgets_report.py runs/bench/dints-budgets
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

from autodeeplab.fast.memory import SavedTensorCounter
from autodeeplab.nets.model_file import load_model
from autodeeplab.ops.losses import DiceCELoss
from autodeeplab.space.dints.arch import DintsArch

GIB = 2**30


def counted_gib(model: torch.nn.Module, patch: list[int], classes: int, batch: int = 2) -> float:
    """Activations the trained network keeps for a training step's backward on ``batch`` patches."""
    model.train()
    x = torch.randn(batch, model.config.in_channels, *patch)
    y = torch.randint(0, classes, (batch, *patch))
    counter = SavedTensorCounter(exclude=[*model.parameters(), *model.buffers()])
    with counter:
        DiceCELoss()(model(x), y)
    return sum(r.nbytes for r in counter.records) / GIB


def main(out: Path) -> None:
    rows = []
    for search in sorted(p for p in out.glob("search-*") if p.is_dir()):
        budget = search.name.removeprefix("search-")
        record = json.loads((search / "arch_params.json").read_text())
        arch = DintsArch.load(search / "dints_arch.json")
        row = {
            "budget": float(budget),
            "expected": record["memory_fraction"],
            "decoded": record["decoded_memory_fraction"],
            "edges": sum(len(b) for b in arch.blocks),
            "arch": arch.short(),
        }
        train = out / f"train-{budget}"
        if (train / "model.pt").exists():
            model, info = load_model(train)
            row["params_m"] = sum(p.numel() for p in model.parameters()) / 1e6
            row["counted_gib"] = counted_gib(model, info.patch_size, info.num_classes)
        if (train / "eval-test.json").exists():
            row["test_dice"] = json.loads((train / "eval-test.json").read_text())["mean_dice"]
        rows.append(row)
    print(
        "| budget | expected memory | decoded memory | active edges | params | saved, batch 2 | test Dice |"
    )
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        dice = f"{r['test_dice']:.4f}" if "test_dice" in r else "-"
        params = f"{r['params_m']:.2f}M" if "params_m" in r else "-"
        saved = f"{r['counted_gib']:.2f} GiB" if "counted_gib" in r else "-"
        print(
            f"| {r['budget']:.1f} | {r['expected']:.3f} | {r['decoded']:.3f} | {r['edges']} | {params} | "
            f"{saved} | {dice} |"
        )
    for r in rows:
        print(f"{r['budget']:.1f}: {r['arch']}")
    (out / "report.json").write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "runs/bench/dints-budgets"))
