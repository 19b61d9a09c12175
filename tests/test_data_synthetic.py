"""The synthetic default: deterministic, fast, split-dependent, and not solvable from colour alone."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch

from autodeeplab.data.registry import build_dataset
from autodeeplab.data.synthetic import BACKGROUND, CLASS_NAMES, OBJECT, SHADOW
from autodeeplab.errors import ConfigError


def stack(dataset) -> tuple[np.ndarray, np.ndarray]:
    pairs = [dataset.load_raw(i) for i in range(len(dataset))]
    return np.stack([p[0] for p in pairs]), np.stack([p[1] for p in pairs])


def test_shapes_classes_and_determinism():
    data = build_dataset("synthetic", None, "train", num_samples=8, size=(32, 48), seed=3)
    assert len(data) == 8 and data.num_classes == len(CLASS_NAMES) == len(data.palette) == 6
    images, masks = stack(data)
    assert images.shape == (8, 32, 48, 3) and images.dtype == np.uint8 and masks.dtype == np.int64
    assert set(np.unique(masks)) <= set(range(6))
    again, again_masks = stack(
        build_dataset("synthetic", None, "train", num_samples=8, size=(32, 48), seed=3)
    )
    assert np.array_equal(images, again) and np.array_equal(masks, again_masks)
    x, y = data[0]
    assert x.shape == (3, 32, 48) and x.dtype == torch.float32 and torch.equal(y, torch.from_numpy(masks[0]))


def test_splits_and_seeds_give_different_data():
    train = build_dataset("synthetic", None, "train", num_samples=4)
    val = build_dataset("synthetic", None, "val", num_samples=4)
    other = build_dataset("synthetic", None, "train", num_samples=4, seed=1)
    for i in range(4):
        assert not np.array_equal(train.load_raw(i)[0], val.load_raw(i)[0])
        assert not np.array_equal(train.load_raw(i)[0], other.load_raw(i)[0])


def grating_residual(image: np.ndarray, fit: np.ndarray, score: np.ndarray) -> float:
    """Background grating (vertical stripes, period 8) fitted on ``fit``; RMS residual on ``score``."""
    xs = np.broadcast_to(np.arange(image.shape[1], dtype=float), image.shape[:2])
    design = np.stack([np.sin(2 * np.pi * xs / 8), np.cos(2 * np.pi * xs / 8), np.ones_like(xs)], -1)
    pixels = image.astype(float)
    coef, *_ = np.linalg.lstsq(design[fit], pixels[fit], rcond=None)
    return float(np.sqrt(((design[score] @ coef - pixels[score]) ** 2).mean()))


def test_shadow_lies_right_below_the_object_and_shows_background_texture():
    data = build_dataset("synthetic", None, "train", num_samples=12)
    checked = 0
    for i in range(len(data)):
        image, mask = data.load_raw(i)
        rows, cols = np.nonzero(mask == OBJECT)
        shadow_rows, shadow_cols = np.nonzero(mask == SHADOW)
        assert shadow_rows.min() == rows.max() + 1
        assert set(shadow_cols) <= set(cols)
        if (mask == BACKGROUND).sum() < 200:
            continue
        # The background grating fitted on background pixels explains the shadow as well as the background
        # itself (up to the pixel noise), and does not explain the object: only position tells shadow apart.
        background = grating_residual(image, mask == BACKGROUND, mask == BACKGROUND)
        shadow = grating_residual(image, mask == BACKGROUND, mask == SHADOW)
        thing = grating_residual(image, mask == BACKGROUND, mask == OBJECT)
        assert shadow < 1.5 * background < thing
        checked += 1
    assert checked >= 4


def test_generation_is_fast():
    data = build_dataset("synthetic", None, "train", num_samples=50)
    start = time.perf_counter()
    for i in range(len(data)):
        data[i]
    per_sample = (time.perf_counter() - start) / len(data)
    assert per_sample < 0.02  # a few ms on a laptop; generous for a shared CI core


@pytest.mark.parametrize("style", ["easy", "hard"])
def test_per_pixel_colour_classifier_fails(style):
    """The best class per quantised colour, fitted on the very pixels it is scored on, is far from solving it.

    Every class is a grating between the same two per-image colours, so colour carries only class priors
    (the largest class holds about 24% of pixels). Measured on these 128 images: 0.31 (easy) and 0.36
    (hard) with 8 levels per channel, 0.40 and 0.41 with 16 levels: finer bins only memorise more pixels of
    this particular set.
    """
    images, masks = stack(build_dataset("synthetic", None, "train", num_samples=128, style=style))
    levels = 8
    q = images // (256 // levels)
    colour = (q[..., 0].astype(np.int64) * levels + q[..., 1]) * levels + q[..., 2]
    counts = np.zeros((levels**3, len(CLASS_NAMES)), dtype=np.int64)
    np.add.at(counts, (colour.ravel(), masks.ravel()), 1)
    accuracy = counts.max(axis=1).sum() / masks.size
    majority = np.bincount(masks.ravel()).max() / masks.size
    assert majority < 0.3
    assert accuracy < 0.45


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"num_samples": -3}, "num_samples: must be a positive integer, got -3"),
        ({"size": (8, 64)}, "size: must be (height, width) integers of at least 16, got (8, 64)"),
        ({"seed": -1}, "seed: must be a non-negative integer, got -1"),
        ({"style": "medium"}, "style: must be one of easy, hard, got 'medium'"),
    ],
)
def test_bad_options_name_the_field(options, message):
    with pytest.raises(ConfigError) as info:
        build_dataset("synthetic", None, "train", **options)
    assert str(info.value) == message


def test_synthetic_refuses_a_data_root():
    with pytest.raises(ConfigError, match=r"^data_root: the synthetic dataset is generated"):
        build_dataset("synthetic", "/some/folder", "train")
