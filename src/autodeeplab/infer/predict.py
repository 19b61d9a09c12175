"""Prediction on image files: label PNGs in the dataset's palette and overlays for a person to look at.

For every input ``NAME.ext`` the output folder receives

- ``NAME_label.png``: a palette ('P' mode) PNG whose pixel values are the class indices, so it can be
  read back as labels *and* shows the dataset's colours in any image viewer;
- ``NAME_overlay.png``: the image blended with the coloured prediction.

Images go through the same normalisation as training (:func:`autodeeplab.data.normalize_image`).
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch import nn

from autodeeplab.data.imageio import (
    DECODE_ERRORS,
    high_depth_problem,
    several_frames_problem,
    upright,
    wide_colour_problem,
)
from autodeeplab.errors import DataError
from autodeeplab.fileio import atomic_write_bytes
from autodeeplab.infer.evaluate import InferenceSettings, predict_labels
from autodeeplab.outputs import png_bytes

DEFAULT_OVERLAY_ALPHA = 0.5
"""Weight of the colour mask in an overlay (0 = image only, 1 = mask only)."""

Palette = Sequence[Sequence[int]]


def load_image(path: str | os.PathLike[str]) -> np.ndarray:
    """Read an image file as ``uint8 [H, W, 3]`` RGB, turned as its EXIF orientation asks (the picture as
    viewers show it: predictions then lie over what the user sees; there is no mask to match here).

    Raises:
        DataError: the file is missing or is not an image PIL can decode (one line naming the file).
    """
    path = Path(path)
    try:
        with Image.open(path) as im:
            why = high_depth_problem(im.mode) or wide_colour_problem(im)
            why = why or several_frames_problem(im, "image")
            if why:
                raise DataError(f"{path}: {why}")
            return np.asarray(upright(im).convert("RGB"), dtype=np.uint8).copy()
    except FileNotFoundError:
        raise DataError(f"{path}: no such image file") from None
    except DECODE_ERRORS as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        if isinstance(exc, UnidentifiedImageError):
            reason = "not a readable image"
        raise DataError(f"{path}: cannot read image ({reason})") from None


def check_image(path: str | os.PathLike[str]) -> None:
    """Fail early (before anything is written) on a missing or undecodable image."""
    load_image(path)


def palette_bytes(palette: Palette) -> bytes:
    """A 768-byte PIL palette: the classes' RGB colours, then black for unused entries."""
    flat = bytearray(768)
    for i, rgb in enumerate(palette[:256]):
        flat[3 * i : 3 * i + 3] = bytes(int(c) for c in rgb)
    return bytes(flat)


def label_image(labels: np.ndarray | torch.Tensor, palette: Palette) -> Image.Image:
    """A 'P'-mode image of ``labels`` ``[H, W]`` (values 0..255) coloured with ``palette``."""
    arr = _as_uint8_labels(labels)
    im = Image.fromarray(arr)  # mode "L"; putpalette turns it into "P"
    im.putpalette(palette_bytes(palette))
    return im


def colorize(labels: np.ndarray | torch.Tensor, palette: Palette) -> np.ndarray:
    """RGB ``uint8 [H, W, 3]`` of ``labels`` ``[H, W]``; values beyond the palette are black."""
    arr = _as_uint8_labels(labels)
    lut = np.frombuffer(palette_bytes(palette), dtype=np.uint8).reshape(256, 3)
    return lut[arr]


def overlay(
    image: np.ndarray,
    labels: np.ndarray | torch.Tensor,
    palette: Palette,
    alpha: float = DEFAULT_OVERLAY_ALPHA,
) -> np.ndarray:
    """The image ``uint8 [H, W, 3]`` blended with the coloured ``labels`` ``[H, W]``: ``uint8 [H, W, 3]``."""
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    colours = colorize(labels, palette)
    if colours.shape != image.shape:
        raise ValueError(f"labels {colours.shape[:2]} and image {image.shape[:2]} differ in size")
    blended = (1.0 - alpha) * image.astype(np.float32) + alpha * colours.astype(np.float32)
    return np.clip(np.rint(blended), 0, 255).astype(np.uint8)


def _as_uint8_labels(labels: np.ndarray | torch.Tensor) -> np.ndarray:
    arr = labels.cpu().numpy() if isinstance(labels, torch.Tensor) else np.asarray(labels)
    if arr.ndim != 2:
        raise ValueError(f"labels must be [H, W], got shape {arr.shape}")
    if arr.size and (arr.min() < 0 or arr.max() > 255):
        raise ValueError("labels must lie in 0..255 to be stored in a palette PNG")
    return arr.astype(np.uint8)


def _png_bytes(im: Image.Image) -> bytes:
    return png_bytes(im)  # marked as ours: a later prediction into the same folder may replace it


@torch.no_grad()
def predict_image(
    model: nn.Module,
    image: np.ndarray,
    settings: InferenceSettings | None = None,
    device: str | torch.device = "cpu",
) -> np.ndarray:
    """Labels ``int64 [H, W]`` for one ``uint8 [H, W, 3]`` image (model in eval mode)."""
    from autodeeplab.data.transforms import normalize_image

    x = torch.as_tensor(normalize_image(image)).unsqueeze(0).to(device)
    return predict_labels(model, x, settings)[0].cpu().numpy()


def output_names(paths: Sequence[str | os.PathLike[str]]) -> list[str]:
    """Distinct output stems for ``paths``: the file stem, with ``_2``, ``_3`` ... on repeats."""
    seen: dict[str, int] = {}
    names = []
    for p in paths:
        stem = Path(p).stem
        seen[stem] = seen.get(stem, 0) + 1
        names.append(stem if seen[stem] == 1 else f"{stem}_{seen[stem]}")
    return names


def predict_files(
    model: nn.Module,
    paths: Sequence[str | os.PathLike[str]],
    output_dir: str | os.PathLike[str],
    palette: Palette,
    settings: InferenceSettings | None = None,
    alpha: float = DEFAULT_OVERLAY_ALPHA,
    device: str | torch.device = "cpu",
) -> list[tuple[Path, Path]]:
    """Predict every image in ``paths``; write label and overlay PNGs into ``output_dir``.

    Every input is checked before anything is written, so a bad file among many leaves no partial
    output. Returns the ``(label_png, overlay_png)`` pair written for each input, in order.
    """
    for p in paths:
        check_image(p)
    model.eval()
    out = Path(output_dir)
    written = []
    for p, name in zip(paths, output_names(paths), strict=True):
        image = load_image(p)
        labels = predict_image(model, image, settings, device)
        label_path, overlay_path = out / f"{name}_label.png", out / f"{name}_overlay.png"
        atomic_write_bytes(label_path, _png_bytes(label_image(labels, palette)))
        blended = overlay(image, labels, palette, alpha)
        atomic_write_bytes(overlay_path, _png_bytes(Image.fromarray(blended)))
        written.append((label_path, overlay_path))
    return written


def predicted_samples(
    model: nn.Module, dataset: Any, count: int, device: str | torch.device = "cpu"
) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """``(image uint8 [H, W, 3], truth int64 [H, W], predicted labels int64 [H, W])`` for the first
    ``count`` samples of ``dataset`` (which needs ``load_raw(i)``). The model runs in eval mode and is put
    back in the mode it was in."""
    was_training = model.training
    model.eval()
    try:
        for index in range(min(count, len(dataset))):
            image, truth = dataset.load_raw(index)
            yield image, truth, predict_image(model, image, device=device)
    finally:
        model.train(was_training)


def prediction_panel(image: np.ndarray, truth: np.ndarray, labels: np.ndarray, dataset: Any) -> np.ndarray:
    """``image | ground truth | prediction`` strip ``uint8 [H, 3W, 3]`` in ``dataset``'s palette; pixels with
    its ``ignore_index`` are black in the truth."""
    void = truth == dataset.ignore_index
    truth_rgb = colorize(np.where(void, 0, truth), dataset.palette)
    truth_rgb[void] = 0
    return np.concatenate([image, truth_rgb, colorize(labels, dataset.palette)], axis=1)


def prediction_panels(
    model: nn.Module, dataset: Any, count: int, device: str | torch.device = "cpu"
) -> list[np.ndarray]:
    """:func:`prediction_panel` strips for the first ``count`` samples (see :func:`predicted_samples`)."""
    return [prediction_panel(*sample, dataset) for sample in predicted_samples(model, dataset, count, device)]


TENSORBOARD_PANELS = 2
"""Validation samples shown as TensorBoard images at each evaluation."""


def log_prediction_panels(
    tensorboard: Any, tag: str, model: nn.Module, dataset: Any, step: int, device: torch.device | str
) -> None:
    """Image | truth | prediction strips of the first samples of ``dataset`` as TensorBoard images."""
    for index, panel in enumerate(prediction_panels(model, dataset, TENSORBOARD_PANELS, device)):
        tensorboard.add_image(f"{tag}/{index}", panel, step, dataformats="HWC")
