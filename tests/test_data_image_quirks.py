"""Files that PIL would read without complaint but wrongly for segmentation are refused with a one-line
reason: EXIF-turned photos, 16 bits per colour channel, stacks of pages, transparent or re-coloured masks.
``predict`` (no mask to match) turns a photo as its EXIF orientation asks."""

from __future__ import annotations

import contextlib
import io
import json
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from test_data_layouts import rgb, save

from autodeeplab.data.imageio import read_label, read_rgb
from autodeeplab.data.problems import DataProblemError
from autodeeplab.data.registry import build_dataset
from autodeeplab.errors import DataError
from autodeeplab.infer.predict import load_image

COLOURS = [[0, 0, 0], [255, 0, 0], [0, 255, 0]]


def exif_photo(path: Path, orientation: int) -> np.ndarray:
    """A 6×8 (H×W) JPEG with a white top-left quarter, tagged with ``orientation``; its stored pixels."""
    pixels = np.zeros((6, 8, 3), dtype=np.uint8)
    pixels[:3, :4] = 255
    exif = Image.Exif()
    exif[0x0112] = orientation
    Image.fromarray(pixels).save(path, exif=exif, quality=100)
    return pixels


def png_16_bit_rgb(path: Path, h: int = 3, w: int = 4) -> None:
    """A PNG of 16 bits per colour channel, written by hand (PIL cannot write one)."""
    values = (np.arange(h * w * 3).reshape(h, w, 3) * 1000).astype(">u2")
    raw = b"".join(b"\x00" + values[i].tobytes() for i in range(h))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", w, h, 16, 2, 0, 0, 0)
    body = chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + body)


def refused(read, path: Path) -> str:
    with pytest.raises(DataProblemError) as caught:
        read(path)
    assert caught.value.problem.path == str(path)
    return caught.value.problem.message


def test_a_photo_with_an_exif_orientation_is_refused_in_a_dataset_and_turned_by_predict(tmp_path):
    stored = exif_photo(tmp_path / "turned.jpg", 6)  # viewers turn it 90° clockwise
    assert "EXIF orientation 6" in refused(read_rgb, tmp_path / "turned.jpg")
    shown = load_image(tmp_path / "turned.jpg")
    assert shown.shape == (8, 6, 3)  # as viewers show it: 8 high, 6 wide
    assert shown[:4, 3:].mean() > 200 and shown[4:].mean() < 50  # the white quarter went top-right
    exif_photo(tmp_path / "upright.jpg", 1)
    assert read_rgb(tmp_path / "upright.jpg").shape == stored.shape
    assert load_image(tmp_path / "upright.jpg").shape == stored.shape


def test_16_bit_colour_and_multi_page_files_are_refused_rather_than_cut(tmp_path):
    png_16_bit_rgb(tmp_path / "deep.png")
    assert "16 bits per colour channel" in refused(read_rgb, tmp_path / "deep.png")
    with pytest.raises(DataError, match="16 bits per colour channel"):
        load_image(tmp_path / "deep.png")
    pages = [Image.fromarray(rgb(i, 3, 4)) for i in range(3)]
    pages[0].save(tmp_path / "stack.tif", save_all=True, append_images=pages[1:])
    assert "holds 3 pages or frames" in refused(read_rgb, tmp_path / "stack.tif")
    masks = [Image.fromarray(np.full((3, 4), i, np.uint8)) for i in range(2)]
    masks[0].save(tmp_path / "masks.tif", save_all=True, append_images=masks[1:])
    assert "label file holds 2 pages" in refused(read_label, tmp_path / "masks.tif")
    pages[0].save(tmp_path / "one.tif")
    assert read_rgb(tmp_path / "one.tif").shape == (3, 4, 3)


def test_colour_masks_must_be_opaque(tmp_path):
    mask = np.zeros((3, 4, 4), dtype=np.uint8)
    mask[..., 0], mask[..., 3] = 255, 255  # red, opaque
    save(tmp_path / "opaque.png", mask)
    assert (read_label(tmp_path / "opaque.png", allow_colour=True) == [255, 0, 0]).all()
    mask[:, 0, 3] = 0  # one transparent column: its red would be read as a class
    save(tmp_path / "holes.png", mask)
    assert "transparent pixels" in refused(lambda p: read_label(p, allow_colour=True), tmp_path / "holes.png")


def palette_folder(
    root: Path, palette: list[list[int]], pad: list[int] | None = None, spec: dict | None = None
) -> Path:
    """A folder whose palette masks hold the values 0, 1, 2 and 255, drawn with ``palette`` (then ``pad``);
    class colours are ``COLOURS`` (0 black, 1 red, 2 green), 255 is ignored."""
    root.mkdir(parents=True)
    spec = spec or {"names": ["background", "red", "green"], "colours": COLOURS, "ignore": 255}
    (root / "classes.yaml").write_text(json.dumps(spec))
    mask = np.array([[0, 1, 2, 255]] * 3, dtype=np.uint8)
    save(root / "images" / "a.png", rgb(0, 3, 4))
    save(root / "masks" / "a.png", mask, "L", palette + [pad or [224, 224, 192]] * (256 - len(palette)))
    return root


def test_palette_masks_are_read_by_index_only_when_their_palette_agrees_with_the_class_colours(tmp_path):
    agrees = build_dataset("folder", palette_folder(tmp_path / "voc", COLOURS), "all")
    assert agrees.load_raw(0)[1].tolist() == [[0, 1, 2, 255]] * 3  # 255: ignore, drawn in any colour
    permuted = [[0, 255, 0], [0, 0, 0], [255, 0, 0]]  # what a viewer shows: 0 green, 1 black, 2 red
    other = build_dataset("folder", palette_folder(tmp_path / "other", permuted), "all")
    with pytest.raises(DataProblemError, match=r"draws value 0 in the colour \[0, 255, 0\] of value 2"):
        other.load_raw(0)
    # a palette of other colours (a tool's default, grey levels) says nothing about the classes
    grey = build_dataset("folder", palette_folder(tmp_path / "grey", [[i, i, i] for i in range(3)]), "all")
    assert grey.load_raw(0)[1].tolist() == [[0, 1, 2, 255]] * 3


def test_palette_masks_drawn_by_class_are_read_whatever_the_values_and_ignore_colours(tmp_path):
    # two stored values of one class, both drawn in its colour
    spec = {"names": ["background", "road"], "values": {0: "background", 1: "road", 2: "road"}}
    spec |= {"colours": [[0, 0, 0], [255, 0, 0]], "ignore": 255}
    two = palette_folder(tmp_path / "two", [[0, 0, 0], [255, 0, 0], [255, 0, 0]], spec=spec)
    assert build_dataset("folder", two, "all").load_raw(0)[1].tolist() == [[0, 1, 1, 255]] * 3
    # a palette padded with black draws the ignored 255 border in the first class's colour
    padded = palette_folder(tmp_path / "padded", COLOURS, pad=[0, 0, 0])
    assert build_dataset("folder", padded, "all").load_raw(0)[1].tolist() == [[0, 1, 2, 255]] * 3


def test_upright_turns_as_pillows_exif_transpose_does_and_ignores_invalid_orientations(tmp_path):
    from PIL import ImageOps

    from autodeeplab.data.imageio import upright

    pixels = rgb(3, 5, 7)
    for orientation in range(1, 10):
        exif = Image.Exif()
        exif[0x0112] = orientation
        Image.fromarray(pixels).save(tmp_path / "o.png", exif=exif)
        with Image.open(tmp_path / "o.png") as image:
            expected = pixels if orientation == 9 else np.asarray(ImageOps.exif_transpose(image))
            assert np.array_equal(np.asarray(upright(image)), expected), orientation
    assert read_rgb(tmp_path / "o.png").shape == pixels.shape  # 9 is no orientation: read as stored


def test_corrupt_exif_blocks_never_escape_as_tracebacks(tmp_path):
    import random
    import warnings

    buffer = io.BytesIO()
    Image.fromarray(rgb(0, 8, 8)).save(buffer, "JPEG")
    base = buffer.getvalue()
    exif = Image.Exif()
    exif[0x0112], exif[0x010F] = 3, "camera"
    good = exif.tobytes()
    rng = random.Random(0)
    path = tmp_path / "f.jpg"
    for _ in range(1500):
        payload = bytearray(good)
        for _ in range(rng.randint(1, 6)):
            payload[rng.randrange(6, len(payload))] = rng.randrange(256)
        segment = b"\xff\xe1" + struct.pack(">H", len(payload) + 2) + bytes(payload)
        path.write_bytes(base[:2] + segment + base[2:])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Pillow warns about the corrupt block it skips
            for read, refusal in ((read_rgb, DataProblemError), (load_image, DataError)):
                with contextlib.suppress(refusal):  # refused in one line, or read: anything else fails
                    read(path)
