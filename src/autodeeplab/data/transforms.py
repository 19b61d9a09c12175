"""Joint image + mask transforms, and the one image normalisation of the package.

A transform is called as ``transform(image, mask, rng)`` with ``image`` ``uint8 [H, W, 3]`` RGB, ``mask``
``uint8 [H, W]`` train ids (ignore = 255) and ``rng`` a :class:`numpy.random.Generator`; it returns
``(float32 [3, h, w] normalised, int64 [h, w])``. Geometry is applied to image and mask together from the same
draws; masks are always resampled nearest-neighbour, and padding of the mask uses the ignore label so that
padded pixels never count in the loss.
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from autodeeplab.data.labels import IGNORE_INDEX
from autodeeplab.errors import ConfigError

IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)
MAX_CROP_SIZE = 4096
"""Largest crop side accepted: larger is certainly a typo and would exhaust memory before failing."""

_MEAN_255 = np.array(IMAGENET_MEAN, dtype=np.float32) * 255.0
_INV_STD_255 = 1.0 / (np.array(IMAGENET_STD, dtype=np.float32) * 255.0)
_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)  # ITU-R 601 grey, for contrast and saturation
# Image padding colour: the mean, so that padded pixels are 0 after normalisation.
_PAD_RGB = tuple(round(m * 255.0) for m in IMAGENET_MEAN)


def normalize_image(image: np.ndarray) -> torch.Tensor:
    """``uint8 [H, W, 3]`` RGB → ``float32 [3, H, W]`` as ``(x / 255 - mean) / std``, ImageNet statistics."""
    # numpy, not torch: elementwise numpy runs on one thread, which keeps data loading in the training
    # process from competing with the model's intra-op threads.
    scaled = (image.astype(np.float32) - _MEAN_255) * _INV_STD_255
    return torch.from_numpy(np.ascontiguousarray(scaled.transpose(2, 0, 1)))


def denormalize_image(tensor: torch.Tensor) -> np.ndarray:
    """Inverse of :func:`normalize_image`: ``[3, H, W]`` → ``uint8 [H, W, 3]`` (rounded, clipped)."""
    rgb = tensor.detach().cpu().float().permute(1, 2, 0).numpy() / _INV_STD_255 + _MEAN_255
    return np.clip(np.rint(rgb), 0, 255).astype(np.uint8)


def _mask_tensor(mask: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(mask).astype(np.int64))


def _as_uint8_mask(mask: np.ndarray) -> np.ndarray:
    if mask.dtype == np.uint8:
        return mask
    if mask.size and (mask.min() < 0 or mask.max() > IGNORE_INDEX):
        raise ValueError(f"mask values must be within 0..{IGNORE_INDEX}, got {mask.min()}..{mask.max()}")
    return mask.astype(np.uint8)


def parse_crop_size(crop_size: int | tuple[int, int] | list[int]) -> tuple[int, int]:
    """``crop_size`` as (height, width); a single int means a square. Raises ConfigError naming the field."""
    pair = (crop_size, crop_size) if isinstance(crop_size, int) else tuple(crop_size)
    if len(pair) != 2 or not all(isinstance(v, int) and not isinstance(v, bool) for v in pair):
        raise ConfigError(f"crop_size: must be an integer or (height, width) integers, got {crop_size!r}")
    if min(pair) < 1:
        raise ConfigError(f"crop_size: must be positive, got {pair[0]}x{pair[1]}")
    if max(pair) > MAX_CROP_SIZE:
        raise ConfigError(f"crop_size: {pair[0]}x{pair[1]} is larger than allowed (at most {MAX_CROP_SIZE})")
    return pair[0], pair[1]


def check_crop_size(
    crop_size: int | tuple[int, int], image_size: tuple[int, int] | None, max_scale: float
) -> None:
    """Refuse a crop that is larger than the images, in both height and width, even at the largest scale.

    Such a crop would be padding on every side of every sample: the model would mostly see ignore pixels.
    ``image_size`` is the (H, W) that bounds the images: their common size, or for layouts whose sizes vary
    the largest height and width of the split (``SegmentationDataset.image_size``); ``None`` (not known)
    skips the check.
    """
    crop_h, crop_w = parse_crop_size(crop_size)
    if image_size is None:
        return
    max_h, max_w = round(image_size[0] * max_scale), round(image_size[1] * max_scale)
    if crop_h > max_h and crop_w > max_w:
        raise ConfigError(
            f"crop_size: {crop_h}x{crop_w} is larger than allowed: the images are at most"
            f" {image_size[0]}x{image_size[1]} (HxW), {max_h}x{max_w} at the largest scale {max_scale:g}"
        )


class EvalTransform:
    """Normalise only: no resizing, cropping or flipping (evaluation sees the image as it is)."""

    def __call__(
        self, image: np.ndarray, mask: np.ndarray, rng: np.random.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return normalize_image(image), _mask_tensor(mask)


class CentreCropTransform:
    """Evaluation on the centre ``crop_size`` window of each image (padded where the image is smaller, the
    mask with ``ignore_index``), unscaled and unflipped: a search validates at the size it trains at, so
    that one validation image costs one supernet forward of a training crop, whatever the photo's size."""

    def __init__(self, crop_size: int | tuple[int, int], ignore_index: int = IGNORE_INDEX) -> None:
        self.crop_size = parse_crop_size(crop_size)
        self.ignore_index = ignore_index

    def __call__(
        self, image: np.ndarray, mask: np.ndarray, rng: np.random.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        mask = _as_uint8_mask(mask)
        height, width = mask.shape
        crop_h, crop_w = self.crop_size
        top, left = max(height - crop_h, 0) // 2, max(width - crop_w, 0) // 2
        window = image[top : top + crop_h, left : left + crop_w]
        inner_h, inner_w = window.shape[:2]
        out_image = np.empty((crop_h, crop_w, 3), dtype=np.uint8)
        out_image[...] = _PAD_RGB
        out_image[:inner_h, :inner_w] = window
        out_mask = np.full((crop_h, crop_w), self.ignore_index, dtype=np.uint8)
        out_mask[:inner_h, :inner_w] = mask[top : top + crop_h, left : left + crop_w]
        return normalize_image(out_image), _mask_tensor(out_mask)


class TrainTransform:
    """Random scale → random crop (padding where the scaled image is smaller) → flip → photometric jitter.

    - ``crop_size``: output (H, W) (an int for a square).
    - ``scale_range``: the scale factor is drawn uniformly from it.
    - ``flip``: horizontal flip with probability 1/2.
    - ``jitter``: brightness, contrast, saturation factors drawn from ``[1 - jitter, 1 + jitter]`` (0: off).
    - ``ignore_index``: mask value of padded pixels.

    Only the crop window is resampled (PIL ``resize`` with a source box), which gives the same pixels as
    scaling the whole image and cropping, at a fraction of the cost for large images.
    """

    def __init__(
        self,
        crop_size: int | tuple[int, int],
        scale_range: tuple[float, float] = (0.5, 2.0),
        flip: bool = True,
        jitter: float = 0.0,
        ignore_index: int = IGNORE_INDEX,
    ) -> None:
        self.crop_size = parse_crop_size(crop_size)
        low, high = (float(v) for v in scale_range)
        if not 0.0 < low <= high:
            raise ConfigError(f"scale_range: must satisfy 0 < low <= high, got {scale_range!r}")
        if not 0.0 <= jitter < 1.0:
            raise ConfigError(f"jitter: must be in [0, 1), got {jitter!r}")
        if not 0 <= ignore_index <= IGNORE_INDEX:
            raise ConfigError(f"ignore_index: must be within 0..{IGNORE_INDEX}, got {ignore_index!r}")
        self.scale_range = (low, high)
        self.flip = flip
        self.jitter = float(jitter)
        self.ignore_index = ignore_index

    def __call__(
        self, image: np.ndarray, mask: np.ndarray, rng: np.random.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        rng = rng if rng is not None else np.random.default_rng()
        mask = _as_uint8_mask(mask)
        height, width = mask.shape
        crop_h, crop_w = self.crop_size
        scale = rng.uniform(*self.scale_range)
        scaled_h, scaled_w = max(1, round(height * scale)), max(1, round(width * scale))
        # The crop window lies in the scaled image padded (bottom/right) up to at least the crop size.
        top = int(rng.integers(0, max(scaled_h, crop_h) - crop_h + 1))
        left = int(rng.integers(0, max(scaled_w, crop_w) - crop_w + 1))
        inner_h, inner_w = min(crop_h, scaled_h - top), min(crop_w, scaled_w - left)
        # Source-pixel box of the window, with the exact factors of the scaled size (not ``scale``) so that
        # it samples the same source pixels as "resize all, then crop".
        box = (
            left * width / scaled_w,
            top * height / scaled_h,
            (left + inner_w) * width / scaled_w,
            (top + inner_h) * height / scaled_h,
        )
        window = np.asarray(Image.fromarray(image).resize((inner_w, inner_h), Image.BILINEAR, box=box))
        window_mask = np.asarray(Image.fromarray(mask).resize((inner_w, inner_h), Image.NEAREST, box=box))
        flipped = self.flip and rng.random() < 0.5
        if self.jitter > 0.0:
            window = self._jitter(window, rng)

        out_image = np.empty((crop_h, crop_w, 3), dtype=np.uint8)
        out_image[...] = _PAD_RGB
        out_image[:inner_h, :inner_w] = window
        out_mask = np.full((crop_h, crop_w), self.ignore_index, dtype=np.uint8)
        out_mask[:inner_h, :inner_w] = window_mask
        if flipped:
            out_image, out_mask = out_image[:, ::-1], out_mask[:, ::-1]
        return normalize_image(out_image), _mask_tensor(out_mask)

    def _jitter(self, window: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Brightness, contrast and saturation factors from ``[1 - jitter, 1 + jitter]``, on ``[h, w, 3]``."""
        brightness, contrast, saturation = rng.uniform(1.0 - self.jitter, 1.0 + self.jitter, size=3)
        pixels = window.astype(np.float32)
        grey = pixels[..., 0] * _LUMA[0] + pixels[..., 1] * _LUMA[1] + pixels[..., 2] * _LUMA[2]
        # Brightness p -> b p; contrast p -> c (p - m) + m around the mean grey m; saturation
        # p -> g + s (p - g) around the pixel's grey g. All linear: one pass computes a p + (k g + offset).
        scale = saturation * contrast * brightness
        grey_weight = (1.0 - saturation) * contrast * brightness
        offset = (1.0 - contrast) * brightness * float(grey.mean())
        out = pixels * np.float32(scale) + (grey * np.float32(grey_weight) + np.float32(offset))[..., None]
        return np.clip(np.rint(out), 0, 255).astype(np.uint8)
