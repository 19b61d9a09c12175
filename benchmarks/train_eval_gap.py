"""Is a trained network's evaluation mode what it learned? (issue 19: rule out a train/eval mismatch)

A network trained on small crops keeps batch-norm running statistics of crop-sized maps: at 192×192 the
output-stride-32 levels see 6×6 maps, and the image-pooling branch averages a crop, not a whole image. Scored
on whole images in evaluation mode, those statistics may not fit. This scores one trained model on images of
a split (default: its own training images, whole, as evaluation sees them) four ways:

- ``eval``: evaluation mode, the running statistics (what ``autodeeplab eval`` does);
- ``batch-stats``: every batch norm normalised with the statistics of the image itself (training mode, no
  gradient, nothing kept);
- ``recalibrated``: the running statistics recomputed as a plain average over the same images at full size,
  then evaluation mode (the model file is not touched);
- ``majority``: every pixel the split's most frequent class (the floor a network must beat).

If ``recalibrated`` or ``batch-stats`` is far above ``eval``, the gap is the statistics, not the
architecture. Prints a table and appends a JSON line to ``benchmarks/results_train_eval_gap.jsonl``.

    python benchmarks/train_eval_gap.py runs/camvid/model.pt --split train --images 64
"""

from __future__ import annotations

import argparse
import copy
import datetime
import json
import sys
from pathlib import Path

import torch
from machine_info import machine_info
from torch import nn

from autodeeplab.data.registry import build_dataset
from autodeeplab.data.transforms import EvalTransform
from autodeeplab.infer.evaluate import evaluate
from autodeeplab.infer.metrics import ConfusionMatrix
from autodeeplab.nets.model_file import load_model

REPO = Path(__file__).resolve().parents[1]


class _BatchStats(nn.Module):
    """The model with every batch norm in training mode (each image's own statistics), no running update."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = copy.deepcopy(model)
        for m in self.model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.track_running_stats = False
                m.running_mean = m.running_var = None

    def train(self, mode: bool = True):  # evaluate() switches to eval; the norms stay on batch statistics
        super().train(mode)
        for m in self.model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.training = True
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


@torch.no_grad()
def recalibrated(model: nn.Module, images: list[torch.Tensor]) -> nn.Module:
    """A copy whose running statistics are the plain average over ``images`` at their full size."""
    copy_ = copy.deepcopy(model)
    norms = [m for m in copy_.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None
    copy_.train()
    for image in images:
        copy_(image.unsqueeze(0))
    return copy_.eval()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("model", help="a trained model.pt (or its run directory)")
    parser.add_argument("--split", default="train")
    parser.add_argument("--images", type=int, default=32, help="images scored (the first of the split)")
    parser.add_argument("--output", type=Path, default=REPO / "benchmarks" / "results_train_eval_gap.jsonl")
    parser.add_argument("--note", default="")
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    model, info = load_model(args.model)
    dataset = build_dataset(info.dataset, info.data_root, args.split, EvalTransform(), **info.dataset_options)
    count = min(args.images, len(dataset))
    samples = [dataset[i] for i in range(count)]
    k, ignore = dataset.num_classes, dataset.ignore_index

    def score(net: nn.Module) -> dict:
        m = evaluate(net, samples, k, dataset.class_names, ignore).metrics
        return {"miou": m.miou, "pixel_accuracy": m.pixel_accuracy}

    rows = {
        "eval": score(model),
        "batch-stats": score(_BatchStats(model)),
        "recalibrated": score(recalibrated(model, [image for image, _ in samples])),
    }
    counts = torch.zeros(k, dtype=torch.long)
    for _, mask in samples:
        counts += torch.bincount(mask[mask != ignore].flatten(), minlength=k)[:k]
    majority = int(counts.argmax())
    cm = ConfusionMatrix(k, ignore)
    for _, mask in samples:
        cm.update(torch.full_like(mask, majority), mask)
    m = cm.compute(dataset.class_names)
    rows["majority"] = {"miou": m.miou, "pixel_accuracy": m.pixel_accuracy}
    print(f"{args.model}: {count} {info.dataset} {args.split} images, whole")
    print("| mode | mIoU | pixel accuracy |\n|---|---|---|")
    for name, r in rows.items():
        print(f"| {name} | {100 * r['miou']:.2f} | {100 * r['pixel_accuracy']:.2f} |")
    record = {
        "benchmark": "train_eval_gap",
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "model": str(args.model),
        "split": args.split,
        "images": count,
        "machine": machine_info("cpu"),
        "note": args.note,
        "command": "python " + " ".join([str(Path(__file__).relative_to(REPO)), *(argv or sys.argv[1:])]),
        **rows,
    }
    with open(args.output, "a", encoding="utf-8") as f:
        f.write(json.dumps(record) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
