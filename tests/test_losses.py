"""The training losses on batches with ignored pixels: equal to torch's mean where it is defined, and 0
with zero gradients (not NaN) where every pixel of the batch is ignored (sparsely labelled data)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from autodeeplab.ops.losses import CrossEntropyLoss, DiceCELoss, split_loss


def batch(dims: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    shape = (2, 4, *[5] * dims)
    logits = torch.randn(shape, generator=g, dtype=torch.float64, requires_grad=True)
    target = torch.randint(0, 4, (2, *[5] * dims), generator=g)
    target[0, 0] = 255
    return logits, target


def test_cross_entropy_is_torchs_mean_over_the_pixels_not_ignored() -> None:
    logits, target = batch()
    expected = F.cross_entropy(logits, target, ignore_index=255)
    assert CrossEntropyLoss(ignore_index=255)(logits, target).item() == pytest.approx(expected.item(), 1e-12)


@pytest.mark.parametrize("loss", [CrossEntropyLoss(ignore_index=255), DiceCELoss(255)])
def test_a_batch_with_every_pixel_ignored_scores_zero_with_zero_gradients(loss) -> None:
    dims = 3 if isinstance(loss, DiceCELoss) else 2
    logits, target = batch(dims)
    target.fill_(255)
    assert torch.isnan(F.cross_entropy(logits, target, ignore_index=255))  # what torch's mean gives
    value = loss(logits, target)
    value.backward()
    assert value.item() == 0.0
    assert torch.equal(logits.grad, torch.zeros_like(logits))
    # a piece of a batch split across processes or micro-batches, the whole of which is ignored
    part = split_loss(loss, logits[:1], target[:1], loss.counts(target))
    assert part.item() == 0.0
