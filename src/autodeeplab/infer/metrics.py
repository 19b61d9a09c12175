"""Segmentation metrics from one streaming confusion matrix: mIoU, per-class IoU, pixel accuracy.

The confusion matrix is accumulated over a whole split (never averaged per image), which is how the
paper and DeepLab report mIoU. Pixels whose ground truth is ``ignore_index`` count nowhere.

Conventions:
- ``matrix[t, p]`` counts pixels of ground-truth class ``t`` predicted as ``p`` (rows = truth).
- IoU of class ``c`` = ``TP / (TP + FP + FN)``. A class that appears neither in the ground truth nor
  in the predictions has no IoU (``None`` in JSON, ``nan`` in floats) and is left out of the mean, as
  TensorFlow's ``mean_iou`` does; a class that is only predicted (false positives) has IoU 0.
- Pixel accuracy = trace / total of the matrix.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from autodeeplab.errors import DataError


class ConfusionMatrix:
    """A ``[K, K]`` int64 confusion matrix that accumulates over batches.

    Args:
        num_classes: ``K``; valid labels are ``0 .. K-1``.
        ignore_index: ground-truth value that marks pixels to skip (CamVid void, padding).
    """

    def __init__(self, num_classes: int, ignore_index: int = 255) -> None:
        if num_classes < 1:
            raise ValueError(f"num_classes must be at least 1, got {num_classes}")
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.matrix = torch.zeros(num_classes, num_classes, dtype=torch.int64)

    def reset(self) -> None:
        self.matrix.zero_()

    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        """Add one batch: ``pred`` and ``target`` are integer label maps of equal shape (``[N, H, W]``).

        Raises:
            DataError: a ground-truth value is neither a class index nor ``ignore_index``.
            ValueError: shapes differ or a prediction is out of range (a programming error).
        """
        if pred.shape != target.shape:
            raise ValueError(f"prediction shape {tuple(pred.shape)} != target shape {tuple(target.shape)}")
        pred = pred.reshape(-1).to(device="cpu", dtype=torch.int64)
        target = target.reshape(-1).to(device="cpu", dtype=torch.int64)
        keep = target != self.ignore_index
        pred, target = pred[keep], target[keep]
        k = self.num_classes
        if target.numel() and (int(target.min()) < 0 or int(target.max()) >= k):
            bad = target[(target < 0) | (target >= k)][0].item()
            raise DataError(
                f"ground-truth label {bad} is outside 0..{k - 1} and is not the ignore label "
                f"{self.ignore_index}"
            )
        if pred.numel() and (int(pred.min()) < 0 or int(pred.max()) >= k):
            raise ValueError(f"predicted labels must lie in 0..{k - 1}")
        # One bincount over the flattened (truth, prediction) pair index: exact and O(pixels).
        self.matrix += torch.bincount(target * k + pred, minlength=k * k).reshape(k, k)

    def compute(self, class_names: Sequence[str] | None = None) -> SegmentationMetrics:
        """The metrics of everything accumulated so far."""
        return metrics_from_confusion(self.matrix, class_names)


@dataclass(frozen=True)
class SegmentationMetrics:
    """mIoU, per-class IoU and pixel accuracy of one confusion matrix.

    ``per_class_iou[c]`` is ``nan`` for a class absent from both truth and prediction.
    """

    miou: float
    per_class_iou: tuple[float, ...]
    pixel_accuracy: float
    mean_class_accuracy: float
    class_names: tuple[str, ...]
    confusion: tuple[tuple[int, ...], ...]

    @property
    def num_pixels(self) -> int:
        return sum(sum(row) for row in self.confusion)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: undefined IoUs become ``None``."""
        return {
            "miou": _json_float(self.miou),
            "pixel_accuracy": _json_float(self.pixel_accuracy),
            "mean_class_accuracy": _json_float(self.mean_class_accuracy),
            "per_class_iou": {
                n: _json_float(v) for n, v in zip(self.class_names, self.per_class_iou, strict=True)
            },
            "num_pixels": self.num_pixels,
            "class_names": list(self.class_names),
            "confusion": [list(row) for row in self.confusion],
        }

    def format_table(self) -> str:
        """A plain-text table: one row per class, then mIoU and pixel accuracy (percent)."""
        width = max([len("pixel accuracy")] + [len(n) for n in self.class_names])
        lines = [f"{'class':<{width}}  {'IoU %':>7}", "-" * (width + 9)]
        for name, iou in zip(self.class_names, self.per_class_iou, strict=True):
            lines.append(f"{name:<{width}}  {_pct(iou):>7}")
        lines.append("-" * (width + 9))
        lines.append(f"{'mIoU':<{width}}  {_pct(self.miou):>7}")
        lines.append(f"{'pixel accuracy':<{width}}  {_pct(self.pixel_accuracy):>7}")
        lines.append(f"{'mean class acc.':<{width}}  {_pct(self.mean_class_accuracy):>7}")
        return "\n".join(lines)


def metrics_from_confusion(
    matrix: torch.Tensor, class_names: Sequence[str] | None = None
) -> SegmentationMetrics:
    """Metrics of a ``[K, K]`` confusion matrix (rows = ground truth, columns = prediction)."""
    if matrix.dim() != 2 or matrix.shape[0] != matrix.shape[1]:
        raise ValueError(f"confusion matrix must be square [K, K], got {tuple(matrix.shape)}")
    k = matrix.shape[0]
    names = tuple(class_names) if class_names is not None else tuple(f"class_{i}" for i in range(k))
    if len(names) != k:
        raise ValueError(f"{len(names)} class names for a {k}-class confusion matrix")
    m = matrix.to(torch.float64)
    tp = m.diag()
    truth = m.sum(dim=1)
    predicted = m.sum(dim=0)
    union = truth + predicted - tp
    iou = torch.where(union > 0, tp / union.clamp(min=1), torch.full_like(tp, math.nan))
    class_acc = torch.where(truth > 0, tp / truth.clamp(min=1), torch.full_like(tp, math.nan))
    total = m.sum()
    return SegmentationMetrics(
        miou=_nanmean(iou),
        per_class_iou=tuple(float(v) for v in iou),
        pixel_accuracy=float(tp.sum() / total) if total > 0 else math.nan,
        mean_class_accuracy=_nanmean(class_acc),
        class_names=names,
        confusion=tuple(tuple(int(v) for v in row) for row in matrix.tolist()),
    )


def _nanmean(x: torch.Tensor) -> float:
    defined = x[~torch.isnan(x)]
    return float(defined.mean()) if defined.numel() else math.nan


def _json_float(x: float) -> float | None:
    return None if math.isnan(x) else x


def _pct(x: float) -> str:
    return "n/a" if math.isnan(x) else f"{100.0 * x:.2f}"
