"""Inference modes and split evaluation on small stand-in models (any [N,3,H,W] -> [N,K,H,W] module)."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from autodeeplab.infer.evaluate import (
    InferenceSettings,
    _tile_starts,
    evaluate,
    predict_labels,
    predict_probabilities,
    sliding_window_logits,
)
from autodeeplab.infer.metrics import ConfusionMatrix

K = 4


class TinyNet(nn.Module):
    """Not flip-symmetric (a 3x3 conv with random weights) and resolution-dependent (a stride-2 path)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.down = nn.Conv2d(8, 8, 3, stride=2, padding=1)
        self.head = nn.Conv2d(16, K, 1)
        self.drop = nn.Dropout(0.5)  # makes train mode visibly different from eval mode

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.conv(x))
        d = F.interpolate(torch.relu(self.down(h)), size=h.shape[2:], mode="bilinear", align_corners=False)
        return self.head(self.drop(torch.cat([h, d], 1)))


class Oracle(nn.Module):
    """Reads the label from channel 0 of the image: logit_k = -(x0 - k)^2."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ks = torch.arange(K, dtype=x.dtype).view(1, K, 1, 1)
        return -((x[:, :1] - ks) ** 2)


def image(h: int = 13, w: int = 17, n: int = 2) -> torch.Tensor:
    return torch.randn(n, 3, h, w, generator=torch.Generator().manual_seed(3))


def test_scale_one_without_flip_equals_single_scale_exactly() -> None:
    net = TinyNet().eval()
    x = image()
    logits = net(x)
    probs = predict_probabilities(net, x, InferenceSettings(scales=(1.0,), flip=False))
    assert torch.equal(probs, torch.softmax(logits, dim=1))
    assert torch.equal(predict_labels(net, x, InferenceSettings(scales=(1.0,))), logits.argmax(1))


def test_multi_scale_flip_averages_softmax_of_resized_logits() -> None:
    net = TinyNet().eval()
    x = image()
    size = x.shape[2:]
    expected = torch.zeros(2, K, *size)
    for s in (0.5, 1.5):
        xs = F.interpolate(x, size=(round(13 * s), round(17 * s)), mode="bilinear", align_corners=False)
        for flip in (False, True):
            out = net(xs.flip(-1)).flip(-1) if flip else net(xs)
            out = F.interpolate(out, size=size, mode="bilinear", align_corners=False)
            expected += torch.softmax(out, 1) / 4
    got = predict_probabilities(net, x, InferenceSettings(scales=(0.5, 1.5), flip=True))
    assert got.shape == (2, K, 13, 17)
    torch.testing.assert_close(got, expected)
    torch.testing.assert_close(got.sum(1), torch.ones(2, 13, 17))
    # The non-symmetric net gives a different answer without the flip, so the flip really ran.
    assert not torch.allclose(got, predict_probabilities(net, x, InferenceSettings(scales=(0.5, 1.5))))


def test_flip_changes_nothing_for_a_mirror_symmetric_model() -> None:
    pointwise = nn.Conv2d(3, K, 1).eval()
    x = image()
    torch.testing.assert_close(
        predict_probabilities(pointwise, x, InferenceSettings(flip=True)),
        predict_probabilities(pointwise, x, InferenceSettings()),
    )


@pytest.mark.parametrize(("size", "tile"), [(10, 4), (10, 10), (7, 9), (11, 5)])
def test_tiles_cover_the_image_and_stay_inside(size: int, tile: int) -> None:
    starts = _tile_starts(size, tile, 1 / 3)
    t = min(tile, size)
    covered = set()
    for s in starts:
        assert s >= 0 and s + t <= size
        covered.update(range(s, s + t))
    assert covered == set(range(size))


def test_sliding_window_equals_whole_image_for_a_pointwise_model() -> None:
    pointwise = nn.Conv2d(3, K, 1).eval()
    x = image(h=19, w=23)
    with torch.no_grad():
        torch.testing.assert_close(sliding_window_logits(pointwise, x, (8, 10), 1 / 3), pointwise(x))
        windowed = predict_probabilities(pointwise, x, InferenceSettings(window=(8, 10)))
        torch.testing.assert_close(windowed, torch.softmax(pointwise(x), 1))


def test_sliding_window_tiles_have_the_window_size() -> None:
    seen = []

    class Recorder(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            seen.append(tuple(x.shape[2:]))
            return x[:, :K]

    sliding_window_logits(Recorder(), image(h=19, w=23, n=1), (8, 10), 0.5)
    assert set(seen) == {(8, 10)}
    assert len(seen) == len(_tile_starts(19, 8, 0.5)) * len(_tile_starts(23, 10, 0.5))


def test_bad_settings_are_rejected() -> None:
    with pytest.raises(ValueError, match="scales must be positive"):
        InferenceSettings(scales=(1.0, 0.0))
    with pytest.raises(ValueError, match="scales must not be empty"):
        InferenceSettings(scales=())
    with pytest.raises(ValueError, match="window_overlap"):
        InferenceSettings(window=(4, 4), window_overlap=1.0)


def labelled_samples(n: int = 3) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(5)
    samples = []
    for _ in range(n):
        labels = torch.randint(0, K, (6, 8), generator=g)
        img = torch.zeros(3, 6, 8)
        img[0] = labels.float()
        mask = labels.clone()
        mask[0, :3] = 255  # ignored pixels
        mask[1, 1] = (labels[1, 1] + 1) % K  # one deliberate mistake per image
        samples.append((img, mask))
    return samples


def test_evaluate_accumulates_one_matrix_over_the_split() -> None:
    samples = labelled_samples()
    result = evaluate(Oracle(), samples, K, ignore_index=255)
    cm = ConfusionMatrix(K, 255)
    for img, mask in samples:
        cm.update(img[0].long(), mask)
    assert result.num_images == 3
    assert result.metrics.confusion == tuple(tuple(r) for r in cm.matrix.tolist())
    assert result.metrics.num_pixels == 3 * (48 - 3)
    assert result.metrics.pixel_accuracy == pytest.approx(1 - 3 / (3 * 45))
    d = result.to_dict()
    assert d["scales"] == [1.0] and d["flip"] is False and d["num_images"] == 3


def test_evaluate_honours_max_images_batches_and_restores_train_mode() -> None:
    net = TinyNet().train()
    samples = labelled_samples(4)
    batched = [
        (torch.stack([samples[0][0], samples[1][0]]), torch.stack([samples[0][1], samples[1][1]])),
        (torch.stack([samples[2][0], samples[3][0]]), torch.stack([samples[2][1], samples[3][1]])),
    ]
    seen: list[int] = []
    result = evaluate(net, batched, K, max_images=3, progress=seen.append)
    assert net.training  # restored
    assert result.num_images == 3 and seen == [2, 3]
    assert result.metrics.num_pixels == 3 * 45
    # eval mode was used: dropout off, so the result is deterministic
    again = evaluate(net, batched, K, max_images=3)
    assert again.metrics.confusion == result.metrics.confusion
