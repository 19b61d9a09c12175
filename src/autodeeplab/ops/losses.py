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
        ce = F.cross_entropy(logits, target, ignore_index=self.ignore_index)
        num_classes = logits.shape[1]
        valid = (target != self.ignore_index).unsqueeze(1).to(logits.dtype)  # [N, 1, *S]
        labels = torch.where(target == self.ignore_index, torch.zeros_like(target), target)
        one_hot = F.one_hot(labels, num_classes).movedim(-1, 1).to(logits.dtype) * valid  # [N, K, *S]
        probs = logits.softmax(dim=1) * valid
        dims = tuple(range(2, logits.ndim))
        intersection = (probs * one_hot).sum(dims)  # [N, K]
        denominator = probs.sum(dims) + one_hot.sum(dims)
        dice = (2 * intersection + SMOOTH) / (denominator + SMOOTH)
        if not self.include_background:
            dice = dice[:, 1:]
        return (1 - dice).mean() + ce


def make_loss(name: str, ignore_index: int) -> nn.Module:
    """The loss called ``name`` (``ce`` or ``dice_ce``) ignoring ``ignore_index``."""
    if name == "dice_ce":
        return DiceCELoss(ignore_index)
    return nn.CrossEntropyLoss(ignore_index=ignore_index)
