"""Files that PIL would read without complaint but wrongly for segmentation are refused with a one-line
reason: EXIF-turned photos, 16 bits per colour channel, stacks of pages, transparent or re-coloured masks.
``predict`` (no mask to match) turns a photo as its EXIF orientation asks."""

from __future__ import annotations

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


def palette_folder(root: Path, palette: list[list[int]]) -> Path:
    """A folder whose palette masks hold the values 0, 1 and 2, drawn with ``palette``; class colours are
    ``COLOURS`` (0 black, 1 red, 2 green)."""
    root.mkdir(parents=True)
    spec = {"names": ["background", "red", "green"], "colours": COLOURS, "ignore": 255}
    (root / "classes.yaml").write_text(json.dumps(spec))
    mask = np.array([[0, 1, 2, 255]] * 3, dtype=np.uint8)
    save(root / "images" / "a.png", rgb(0, 3, 4))
    save(root / "masks" / "a.png", mask, "L", palette + [[224, 224, 192]] * (256 - len(palette)))
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
