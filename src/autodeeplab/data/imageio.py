"""Decoding images and label maps from disk with PIL, turning every failure into a :class:`DataProblem`.

Images come back as ``uint8 [H, W, 3]`` RGB arrays. Label files come back as they are stored: ``[H, W]``
integer class values for single-channel files (8-bit, palette or 16-bit), or ``uint8 [H, W, 3]`` for
colour-coded labels; mapping raw values to train ids is :mod:`autodeeplab.data.labels`' job. Nothing here
changes PIL's global settings: a truncated file stays an error instead of being silently padded.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image

from autodeeplab.data.problems import DataProblemError, problem

IMAGE_SUFFIXES: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
"""File endings read as images by the layouts that scan folders."""

# Single-channel PIL modes whose pixel values are class values as they are.
_INDEX_MODES = frozenset({"L", "P", "I", "I;16", "I;16B", "I;16L", "1"})
_COLOUR_MODES = frozenset({"RGB", "RGBA"})
DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError)
"""What PIL raises for a file it cannot identify, a truncated or malformed one (some plugins raise
``SyntaxError`` or ``EOFError``), or one too large to be an image."""


def _open_decoded(path: Path, kind: str) -> Image.Image:
    """Open and fully decode ``path`` (so that truncation shows up now, not in the middle of training)."""
    if not path.is_file():
        raise DataProblemError(problem(path, f"{kind} file not found"))
    try:
        image = Image.open(path)
        image.load()
    except DECODE_ERRORS as exc:
        raise _unreadable(path, kind, exc) from None
    return image


def _unreadable(path: Path, kind: str, exc: Exception) -> DataProblemError:
    reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return DataProblemError(problem(path, f"unreadable or truncated {kind} file ({reason})"))


def read_size(path: str | Path, kind: str = "image") -> tuple[int, int]:
    """(H, W) of an image file from its header alone (no pixel decoding).

    A file whose header cannot be read gets the same problem message as :func:`read_rgb` would give.
    """
    path = Path(path)
    if not path.is_file():
        raise DataProblemError(problem(path, f"{kind} file not found"))
    try:
        with Image.open(path) as image:
            width, height = image.size
    except DECODE_ERRORS as exc:
        raise _unreadable(path, kind, exc) from None
    return height, width


HIGH_DEPTH_MODES = frozenset({"I", "I;16", "I;16B", "I;16L", "I;16N", "F"})
"""PIL modes of 16-bit, 32-bit and float images: converting them to 8-bit RGB clips every value above 255."""


def high_depth_problem(mode: str) -> str | None:
    """Why an image of PIL ``mode`` is refused as input (``None`` when it is 8-bit and fine)."""
    if mode not in HIGH_DEPTH_MODES:
        return None
    return (
        f"image has more than 8 bits per pixel (PIL mode {mode!r}); converting it would clip its values, so "
        "convert it to 8-bit yourself with the scaling your data needs"
    )


def read_rgb(path: str | Path) -> np.ndarray:
    """Decode an image file to ``uint8 [H, W, 3]`` RGB (grey, palette and RGBA files are converted;
    16-bit and float images are refused, see :func:`high_depth_problem`)."""
    image = _open_decoded(Path(path), "image")
    why = high_depth_problem(image.mode)
    if why:
        raise DataProblemError(problem(Path(path), why))
    if image.mode != "RGB":
        image = image.convert("RGB")
    return np.asarray(image, dtype=np.uint8)


def read_label(path: str | Path, allow_colour: bool = False, hint: str = "") -> np.ndarray:
    """Decode a label file without interpreting it.

    Returns ``[H, W]`` integers (``uint8`` for 8-bit/palette files, ``int32`` for 16-bit ones) as stored; with
    ``allow_colour`` an RGB(A) label comes back as ``uint8 [H, W, 3]`` for colour decoding, otherwise it is a
    problem, since reading an RGB picture as class indices would train on nonsense (``hint`` ends its
    message: how this dataset could read colour-coded labels).
    """
    path = Path(path)
    image = _open_decoded(path, "label")
    if image.mode in _INDEX_MODES:
        # Palette ('P') files give palette indices here, which is exactly the class index (VOC).
        dtype = np.uint8 if image.mode in ("L", "P", "1") else np.int32
        return np.asarray(image, dtype=dtype)
    if image.mode in _COLOUR_MODES and allow_colour:
        return np.asarray(image.convert("RGB"), dtype=np.uint8)
    expected = (
        "single-channel class indices or RGB colours" if allow_colour else "single-channel class indices"
    )
    message = f"label file has PIL mode {image.mode!r}; expected {expected}"
    raise DataProblemError(problem(path, message + (hint if image.mode in _COLOUR_MODES else "")))


def check_same_size(image: np.ndarray, label: np.ndarray, image_path: Path, label_path: Path) -> None:
    """Raise a problem naming both files when an image and its label differ in height or width."""
    if image.shape[:2] != label.shape[:2]:
        (ih, iw), (lh, lw) = image.shape[:2], label.shape[:2]
        message = f"size mismatch: image {image_path.name} is {iw}x{ih} (WxH) but its label is {lw}x{lh}"
        raise DataProblemError(problem(label_path, message))


def encode_png(array: np.ndarray) -> bytes:
    """PNG bytes of a ``uint8 [H, W]`` or ``uint8 [H, W, 3]`` array (for writers that go through fileio)."""
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()
