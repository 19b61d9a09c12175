"""Joint transforms: alignment of image and mask, padding, nearest masks, normalisation, bad settings."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from autodeeplab.data.transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    EvalTransform,
    TrainTransform,
    check_crop_size,
    denormalize_image,
    normalize_image,
)
from autodeeplab.errors import ConfigError

COLOURS = np.array([[255, 0, 0], [0, 255, 0], [0, 0, 255], [255, 255, 0], [0, 0, 0]], dtype=np.uint8)


def blocky_scene(seed: int, h: int = 48, w: int = 64, block: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """A mask of random 8×8 blocks of classes 0..4 and the image that paints each class its own colour."""
    rng = np.random.default_rng(seed)
    blocks = rng.integers(0, len(COLOURS), size=(h // block, w // block))
    mask = np.kron(blocks, np.ones((block, block), dtype=np.int64)).astype(np.uint8)
    return COLOURS[mask], mask


def class_from_colour(image: np.ndarray) -> np.ndarray:
    distances = ((image[:, :, None, :].astype(int) - COLOURS[None, None].astype(int)) ** 2).sum(-1)
    return distances.argmin(-1)


def interior(mask: np.ndarray) -> np.ndarray:
    """Pixels whose 3×3 neighbourhood has one label (away from edges, where bilinear blends colours)."""
    padded = np.pad(mask, 1, mode="edge")
    same = np.ones_like(mask, dtype=bool)
    for dy in range(3):
        for dx in range(3):
            same &= padded[dy : dy + mask.shape[0], dx : dx + mask.shape[1]] == mask
    return same & (mask != 255)


def test_normalize_image_matches_hand_computation_and_inverts():
    image = np.array([[[0, 128, 255]]], dtype=np.uint8)
    out = normalize_image(image)
    expected = [(v / 255 - m) / s for v, m, s in zip((0, 128, 255), IMAGENET_MEAN, IMAGENET_STD, strict=True)]
    assert out.shape == (3, 1, 1) and out.dtype == torch.float32
    assert torch.allclose(out.flatten(), torch.tensor(expected), atol=1e-5)
    noise = np.random.default_rng(0).integers(0, 256, size=(5, 7, 3), dtype=np.uint8)
    assert np.array_equal(denormalize_image(normalize_image(noise)), noise)


def test_eval_transform_keeps_geometry():
    image, mask = blocky_scene(0)
    x, y = EvalTransform()(image, mask)
    assert x.shape == (3, 48, 64) and torch.equal(y, torch.from_numpy(mask.astype(np.int64)))


@pytest.mark.parametrize("seed", range(6))
def test_train_transform_keeps_image_and_mask_aligned(seed):
    image, mask = blocky_scene(seed)
    transform = TrainTransform((40, 56), scale_range=(0.5, 2.0), flip=True)
    x, y = transform(image, mask, np.random.default_rng(seed))
    assert x.shape == (3, 40, 56) and y.shape == (40, 56) and y.dtype == torch.int64
    out_mask = y.numpy()
    seen = class_from_colour(denormalize_image(x))
    inside = interior(out_mask)
    assert inside.sum() > 100
    assert (seen[inside] == out_mask[inside]).mean() > 0.99
    # The check has teeth: a mask flipped on its own disagrees with its image.
    assert (seen[inside] == out_mask[:, ::-1][inside]).mean() < 0.8


def test_masks_are_resampled_nearest_only():
    image, mask = blocky_scene(3)
    transform = TrainTransform(32, scale_range=(0.6, 1.7))
    for seed in range(5):
        _, y = transform(image, mask, np.random.default_rng(seed))
        assert set(np.unique(y.numpy())) <= set(np.unique(mask)) | {255}


def test_window_resampling_equals_resize_then_crop():
    """The box-based window gives the same pixels as scaling the whole image first."""
    image, mask = blocky_scene(5, h=45, w=63, block=3)
    image = np.random.default_rng(1).integers(0, 256, size=image.shape, dtype=np.uint8)
    height, width = mask.shape
    transform = TrainTransform((24, 30), scale_range=(0.7, 1.6), flip=False)
    for seed in range(4):
        x, y = transform(image, mask, np.random.default_rng(seed))
        rng = np.random.default_rng(seed)  # replay the draws: scale, top, left
        scale = rng.uniform(0.7, 1.6)
        sh, sw = round(height * scale), round(width * scale)
        top, left = int(rng.integers(0, max(sh, 24) - 24 + 1)), int(rng.integers(0, max(sw, 30) - 30 + 1))
        full_mask = np.asarray(Image.fromarray(mask).resize((sw, sh), Image.NEAREST))
        full_image = np.asarray(Image.fromarray(image).resize((sw, sh), Image.BILINEAR)).astype(int)
        window = (slice(top, top + 24), slice(left, left + 30))
        assert np.array_equal(y.numpy(), full_mask[window])
        assert np.abs(denormalize_image(x).astype(int) - full_image[window]).mean() < 1.0


def test_padding_uses_ignore_for_mask_and_mean_for_image():
    image, mask = blocky_scene(1, h=16, w=16)
    x, y = TrainTransform(40, scale_range=(1.0, 1.0), flip=False)(image, mask, np.random.default_rng(0))
    assert torch.equal(y[:16, :16], torch.from_numpy(mask.astype(np.int64)))
    assert (y[16:] == 255).all() and (y[:, 16:] == 255).all()
    assert x[:, 16:, :].abs().max() < 0.01 and x[:, :, 16:].abs().max() < 0.01  # mean colour → 0


def test_jitter_changes_colours_not_masks():
    image, mask = blocky_scene(2)
    plain = TrainTransform(32, flip=False)
    jittered = TrainTransform(32, flip=False, jitter=0.4)
    x0, y0 = plain(image, mask, np.random.default_rng(7))
    x1, y1 = jittered(image, mask, np.random.default_rng(7))
    assert torch.equal(y0, y1) and not torch.allclose(x0, x1)
    x2, _ = jittered(image, mask, np.random.default_rng(7))
    assert torch.equal(x1, x2)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"crop_size": 0}, "crop_size: must be positive, got 0x0"),
        ({"crop_size": (-5, 10)}, "crop_size: must be positive, got -5x10"),
        ({"crop_size": 5000}, "crop_size: 5000x5000 is larger than allowed (at most 4096)"),
        ({"crop_size": "big"}, "crop_size: must be an integer or (height, width) integers, got 'big'"),
        (
            {"crop_size": 8, "scale_range": (2.0, 1.0)},
            "scale_range: must satisfy 0 < low <= high, got (2.0, 1.0)",
        ),
        ({"crop_size": 8, "jitter": 1.5}, "jitter: must be in [0, 1), got 1.5"),
    ],
)
def test_bad_transform_settings_name_the_field(kwargs, message):
    with pytest.raises(ConfigError) as info:
        TrainTransform(**kwargs)
    assert str(info.value) == message


def test_crop_larger_than_images_at_largest_scale_is_refused():
    check_crop_size(128, (64, 64), 2.0)  # fits at scale 2
    with pytest.raises(ConfigError) as info:
        check_crop_size(321, (64, 64), 2.0)
    assert str(info.value) == (
        "crop_size: 321x321 is larger than allowed: the images are at most 64x64 (HxW),"
        " 128x128 at the largest scale 2"
    )


def test_jitter_is_brightness_then_contrast_then_saturation():
    image = np.random.default_rng(3).integers(0, 256, size=(12, 16, 3), dtype=np.uint8)
    mask = np.zeros((12, 16), np.uint8)
    x, _ = TrainTransform((12, 16), scale_range=(1.0, 1.0), flip=False, jitter=0.3)(
        image, mask, np.random.default_rng(9)
    )
    rng = np.random.default_rng(9)
    rng.uniform(1.0, 1.0), rng.integers(0, 1), rng.integers(0, 1)  # scale, top, left
    brightness, contrast, saturation = rng.uniform(0.7, 1.3, size=3)
    luma = np.array([0.299, 0.587, 0.114])
    step = image.astype(float) * brightness
    mean_grey = (step @ luma).mean()
    step = (step - mean_grey) * contrast + mean_grey
    grey = step @ luma
    step = grey[..., None] + (step - grey[..., None]) * saturation
    expected = np.clip(np.rint(step), 0, 255)
    assert np.abs(denormalize_image(x).astype(float) - expected).max() <= 1
