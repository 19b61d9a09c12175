"""How much Dice survives a network whose logits are made at output stride S and upsampled.

For each volume of a split, the one-hot labels are averaged over S×S×S cells (what an ideal network at
stride S could know), upsampled back trilinearly, and the argmax is scored against the labels. Not a strict
bound (learned logits can place a boundary inside a cell better than an average can), but a close guide:
on hippocampus at 1 mm the stride-4 figure is what the paper's decoder reached.

    python benchmarks/dice_ceiling.py --data-root ../shared/data/hippocampus --split val --strides 2 4
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
import torch.nn.functional as F

from autodeeplab.data.volumes import NiftiFolderDataset
from autodeeplab.infer.volume_metrics import dice_per_class


def ceiling(mask: torch.Tensor, stride: int, classes: int) -> list[float]:
    """Dice per class of ``mask`` ``[D, H, W]`` after averaging its one-hot over ``stride`` cells."""
    one_hot = F.one_hot(mask, classes).permute(3, 0, 1, 2)[None].float()
    shape = mask.shape
    pad = [(-s) % stride for s in shape]
    padded = F.pad(one_hot, (0, pad[2], 0, pad[1], 0, pad[0]))
    coarse = F.avg_pool3d(padded, stride)
    fine = F.interpolate(coarse, size=padded.shape[2:], mode="trilinear", align_corners=False)
    predicted = fine[0, :, : shape[0], : shape[1], : shape[2]].argmax(0)
    return dice_per_class(predicted, mask, classes)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-root", default="../shared/data/hippocampus")
    parser.add_argument("--split", default="val")
    parser.add_argument("--strides", type=int, nargs="+", default=[2, 4])
    args = parser.parse_args()
    data = NiftiFolderDataset(args.data_root, args.split, split_order="sorted", split_fractions=(0.1, 0.2))
    masks = [data[i][1] for i in range(len(data))]
    for stride in args.strides:
        scores = np.array([ceiling(m, stride, data.num_classes)[1:] for m in masks])
        per_class = ", ".join(
            f"{name} {v:.4f}" for name, v in zip(data.class_names[1:], scores.mean(0), strict=True)
        )
        print(
            f"stride {stride}: mean foreground Dice {scores.mean():.4f} ({per_class}; {len(masks)} volumes)"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
