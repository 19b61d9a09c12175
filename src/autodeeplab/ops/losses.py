"""Training losses: cross-entropy for images, soft Dice + cross-entropy for volumes (as nnU-Net).

Both skip voxels labelled with the ignore index (padding of small volumes, unlabelled pixels). MONAI's
``DiceCELoss`` has no ignore index for its Dice part, hence this one; without ignored voxels it computes
exactly what ``DiceCELoss(include_background=False, to_onehot_y=True, softmax=True)`` does (tested).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

SMOOTH = 1e-5
"""Added to numerator and denominator of each Dice ratio (MONAI's default): an empty class gives 1,
not 0/0."""


class DiceCELoss(nn.Module):
    """``logits [N, K, *S]``, ``target int64 [N, *S]`` → ``1 - mean soft Dice + cross-entropy``.

    The soft Dice of class k in sample n is ``(2 Σ p·t + s) / (Σ p + Σ t + s)`` over the sample's voxels
    that are not ignored, with p the softmax probability and t the one-hot target; it is averaged over the
    samples and the foreground classes 1..K-1 (background is left out, as in nnU-Net, so that the large
    background does not dominate). The cross-entropy is the mean over the voxels that are not ignored.
    """

    def __init__(self, ignore_index: int = 255, include_background: bool = False) -> None:
        super().__init__()
        self.ignore_index = ignore_index
        self.include_background = include_background

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return split_loss(self, logits, target, self.counts(target))

    def counts(self, target: torch.Tensor) -> torch.Tensor:
        """``[2]``: the samples (what the Dice term averages over) and the voxels not ignored (the
        cross-entropy's); see :func:`split_loss`."""
        samples = torch.tensor(target.shape[0], device=target.device)
        return torch.stack([samples, (target != self.ignore_index).sum()])

    def sums(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """``[2]``: the per-sample Dice losses summed, the voxels' cross-entropies summed."""
        ce = F.cross_entropy(logits, target, ignore_index=self.ignore_index, reduction="sum")
        dice = self._dice(logits, target)
        return torch.stack([(1 - dice).mean(dim=1).sum(), ce])

    def _dice(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """``[N, K or K-1]``: each sample's soft Dice per class (background left out unless included);
        ignored voxels count in neither the prediction nor the truth."""
        num_classes = logits.shape[1]
        valid = (target != self.ignore_index).unsqueeze(1).to(logits.dtype)
        labels = torch.where(target == self.ignore_index, torch.zeros_like(target), target)
        # one-hot by comparison, not F.one_hot, whose range checks read the labels back on a CPU (a host
        # sync inside the step; out-of-range labels are refused by the cross-entropy all the same)
        classes = torch.arange(num_classes, device=labels.device).view(1, -1, *[1] * (labels.dim() - 1))
        one_hot = (labels.unsqueeze(1) == classes).to(logits.dtype) * valid
        probs = logits.softmax(dim=1) * valid
        dims = tuple(range(2, logits.ndim))
        dice = (2 * (probs * one_hot).sum(dims) + SMOOTH) / (probs.sum(dims) + one_hot.sum(dims) + SMOOTH)
        return dice if self.include_background else dice[:, 1:]


class CrossEntropyLoss(nn.CrossEntropyLoss):
    """torch's cross-entropy (mean over the pixels not ignored), splittable (:func:`split_loss`); a batch
    whose every pixel is ignored scores 0 (torch's mean is 0/0 = NaN there)."""

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return split_loss(self, logits, target, self.counts(target))

    def counts(self, target: torch.Tensor) -> torch.Tensor:
        """``[1]``: the pixels not ignored."""
        return (target != self.ignore_index).sum().reshape(1)

    def sums(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """``[1]``: their cross-entropies summed."""
        ce = F.cross_entropy(logits, target, ignore_index=self.ignore_index, reduction="sum")
        return ce.reshape(1)


def split_loss(
    loss: nn.Module, logits: torch.Tensor, target: torch.Tensor, counts: torch.Tensor
) -> torch.Tensor:
    """The part of ``loss`` over the whole batch that this piece ``(logits, target)`` contributes: its sums
    divided by ``counts``, the whole batch's :meth:`counts` (every micro-batch of every rank). The parts of
    all pieces add up to ``loss(whole batch)``: each term of these losses is a mean over samples or over
    voxels, so a batch split across processes or micro-batches is scored as if it were one (a plain mean
    per piece would weight a piece with many ignored pixels like one without). A batch with every pixel
    ignored (sparse labels) adds 0, with zero gradients, not 0/0."""
    sums = loss.sums(logits, target)
    return (sums / counts.to(sums.device, sums.dtype).clamp(min=1)).sum()


def make_loss(name: str, ignore_index: int) -> nn.Module:
    """The loss called ``name`` (``ce`` or ``dice_ce``) ignoring ``ignore_index``; both have ``counts`` and
    ``sums`` for :func:`split_loss`."""
    if name == "dice_ce":
        return DiceCELoss(ignore_index)
    return CrossEntropyLoss(ignore_index=ignore_index)
