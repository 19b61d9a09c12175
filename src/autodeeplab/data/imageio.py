"""Decoding images and label maps from disk with PIL, turning every failure into a :class:`DataProblem`.

Images come back as ``uint8 [H, W, 3]`` RGB arrays. Label files come back as they are stored: ``[H, W]``
integer class values for single-channel files (8-bit, palette or 16-bit), or ``uint8 [H, W, 3]`` for
colour-coded labels; mapping raw values to train ids is :mod:`autodeeplab.data.labels`' job. Nothing here
changes PIL's global settings: a truncated file stays an error instead of being silently padded.
"""

from __future__ import annotations

import io
from collections.abc import Mapping
from pathlib import Path

import numpy as np
from PIL import Image

from autodeeplab.data.labels import IGNORE_INDEX, LabelMap
from autodeeplab.data.problems import DataProblemError, problem

IMAGE_SUFFIXES: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".gif")
"""File endings read as images by the layouts that scan folders."""

# Single-channel PIL modes whose pixel values are class values as they are.
_INDEX_MODES = frozenset({"L", "P", "I", "I;16", "I;16B", "I;16L", "1"})
_COLOUR_MODES = frozenset({"RGB", "RGBA"})
DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError)
"""What PIL raises for a file it cannot identify, a truncated or malformed one (some plugins raise
``SyntaxError`` or ``EOFError``), or one too large to be an image."""


def _open_decoded(path: Path, kind: str) -> Image.Image:
    """Open and fully decode ``path`` (so that truncation shows up now, not in the middle of training).

    Refused, since reading them as they are would misread the data silently: pixels stored with 16 bits
    per colour channel (PIL keeps their high byte), files of several pages or frames (PIL reads the first),
    and pictures with an EXIF orientation (viewers show them turned, so which way the mask was drawn cannot
    be told)."""
    if not path.is_file():
        raise DataProblemError(problem(path, f"{kind} file not found"))
    try:
        image = Image.open(path)
        why = wide_colour_problem(image) or several_frames_problem(image, kind) or orientation_problem(image)
        image.load()
    except DECODE_ERRORS as exc:
        raise _unreadable(path, kind, exc) from None
    if why:
        raise DataProblemError(problem(path, why))
    return image


def wide_colour_problem(image: Image.Image) -> str | None:
    """Why a colour file stored with 16 bits per channel is refused (read before ``load``, from the decoder's
    raw mode: PIL opens such a PNG as 8-bit ``RGB``, keeping the high byte of every value)."""
    raw = image.tile[0][3] if image.tile else None
    raw = raw[0] if isinstance(raw, tuple) and raw else raw
    # "RGB;16B", "RGBA;16L"...: 16 bits per channel; not "BGR;16", a BMP's 16 bits per pixel (5-6-5)
    layout, _, depth = raw.partition(";") if isinstance(raw, str) else ("", "", "")
    if image.mode in _COLOUR_MODES and layout in ("RGB", "RGBA", "RGBX") and depth.startswith("16"):
        return (
            f"file has 16 bits per colour channel (stored as {raw!r}); reading it as 8-bit would keep only "
            "the high byte of each value, so convert it to 8-bit yourself with the scaling your data needs"
        )
    return None


def several_frames_problem(image: Image.Image, kind: str) -> str | None:
    """Why a file of several pages or frames (a TIFF stack, an animated GIF or PNG) is refused: PIL reads
    the first alone. A camera's MPO JPEG is its main picture plus previews, and is read as that picture."""
    frames = getattr(image, "n_frames", 1)
    if frames > 1 and image.format != "MPO":
        return (
            f"{kind} file holds {frames} pages or frames and only the first would be read; save one per file"
        )
    return None


ORIENTATION_TAG = 0x0112
"""EXIF's orientation tag: 1 is upright; 2-8 ask viewers to turn or mirror the stored pixels."""
_TURNS = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
"""What each EXIF orientation asks a viewer to do with the stored pixels."""


def exif_orientation(image: Image.Image) -> int:
    """The EXIF orientation 1-8 of ``image``: 1 (upright) without one, or when it is not a valid value or
    the EXIF block cannot be parsed (viewers then show the stored pixels too)."""
    try:
        orientation = image.getexif().get(ORIENTATION_TAG, 1)
    except Exception:  # noqa: BLE001  (Pillow's EXIF parser raises many kinds on a corrupt block)
        return 1
    return orientation if orientation in _TURNS else 1


def upright(image: Image.Image) -> Image.Image:
    """``image`` as viewers show it: turned or mirrored as its EXIF orientation asks (without rewriting
    its EXIF block, which a corrupt block would fail)."""
    turn = _TURNS.get(exif_orientation(image))
    return image.transpose(turn) if turn is not None else image


def orientation_problem(image: Image.Image) -> str | None:
    """Why a picture with an EXIF orientation other than upright is refused in a dataset: a viewer shows it
    turned or mirrored, and its mask may have been drawn on either picture."""
    orientation = exif_orientation(image)
    if orientation == 1:
        return None
    return (
        f"EXIF orientation {orientation}: viewers show this picture turned or mirrored, its pixels are "
        "stored otherwise, and whether its mask was drawn on the one or the other cannot be told; if the "
        "mask matches what viewers show, store the picture upright (PIL.ImageOps.exif_transpose), else drop "
        "the tag"
    )


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


def read_label(
    path: str | Path,
    allow_colour: bool = False,
    hint: str = "",
    colours: Mapping[tuple[int, int, int], int] | None = None,
    label_map: LabelMap | None = None,
) -> np.ndarray:
    """Decode a label file without interpreting it.

    Returns ``[H, W]`` integers (``uint8`` for 8-bit/palette files, ``int32`` for 16-bit ones) as stored;
    with ``allow_colour`` an opaque RGB(A) label comes back as ``uint8 [H, W, 3]`` for colour decoding,
    otherwise it is a problem, since reading an RGB picture as class indices would train on nonsense
    (``hint`` ends its message: how this dataset could read colour-coded labels). ``colours`` (colour ->
    stored value, the dataset's class colours) and ``label_map``: a palette file whose palette draws a
    value in the colour of another class is refused (:func:`palette_problem`).
    """
    path = Path(path)
    image = _open_decoded(path, "label")
    if image.mode in _INDEX_MODES:
        # Palette ('P') files give palette indices here, which is exactly the class index (VOC).
        dtype = np.uint8 if image.mode in ("L", "P", "1") else np.int32
        values = np.asarray(image, dtype=dtype)
        why = palette_problem(image, values, colours, label_map) if image.mode == "P" and colours else None
        if why:
            raise DataProblemError(problem(path, why))
        return values
    if image.mode in _COLOUR_MODES and allow_colour:
        if image.mode == "RGBA" and int(np.asarray(image.getchannel("A")).min()) < 255:
            message = (
                "label file has transparent pixels, and colour decoding reads only R, G and B; make every "
                "pixel opaque (unlabelled ones in the ignore colour)"
            )
            raise DataProblemError(problem(path, message))
        return np.asarray(image.convert("RGB"), dtype=np.uint8)
    expected = (
        "single-channel class indices or RGB colours" if allow_colour else "single-channel class indices"
    )
    message = f"label file has PIL mode {image.mode!r}; expected {expected}"
    raise DataProblemError(problem(path, message + (hint if image.mode in _COLOUR_MODES else "")))


def palette_problem(
    image: Image.Image,
    values: np.ndarray,
    colours: Mapping[tuple[int, int, int], int],
    label_map: LabelMap | None = None,
) -> str | None:
    """Why a palette label is refused: its palette draws a value it uses in the colour the dataset gives
    another class (``colours``: colour -> stored value; classes compared through ``label_map``, values
    themselves without one), so that the picture shows other classes than reading it by index, as palette
    labels are read, gives. Not a problem: a palette of other colours (a tool's default, grey levels),
    which says nothing about the classes, and an ignore value drawn in any colour (a palette padded with
    black draws the 255 border in the first class's colour)."""
    palette = image.getpalette() or []

    def class_of(value: int) -> int | None:
        return label_map.train_id(value) if label_map is not None else value

    for value in np.unique(values).tolist():
        drawn = tuple(palette[3 * value : 3 * value + 3])
        meant = colours.get(drawn) if len(drawn) == 3 else None
        seen = class_of(value)  # None: a value outside the class set, which the label map reports
        if meant is None or seen is None or seen == IGNORE_INDEX or class_of(meant) == seen:
            continue
        return (
            f"palette label draws value {value} in the colour {list(drawn)} of value {meant}; palette "
            f"labels are read by index, so these pixels would be value {value}: make the palette agree "
            "with the class colours, or save the label as RGB to be decoded by colour"
        )
    return None


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
