"""Rendering predictions: palette label PNGs, overlays, unreadable images, and the files written."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from autodeeplab.data.transforms import normalize_image
from autodeeplab.errors import DataError
from autodeeplab.infer.predict import (
    colorize,
    label_image,
    load_image,
    output_names,
    overlay,
    predict_files,
    predict_image,
)

PALETTE = [[0, 0, 0], [255, 0, 0], [0, 128, 255]]


def pointwise_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Conv2d(3, len(PALETTE), 1).eval()


def write_image(path: Path, h: int = 9, w: int = 13, seed: int = 0) -> np.ndarray:
    rgb = np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(path)
    return rgb


def test_label_png_round_trips_values_and_palette(tmp_path: Path) -> None:
    labels = np.array([[0, 1, 2], [2, 1, 0]])
    label_image(labels, PALETTE).save(tmp_path / "l.png")
    back = Image.open(tmp_path / "l.png")
    assert back.mode == "P"
    assert np.array_equal(np.array(back), labels)
    assert back.getpalette()[:9] == [0, 0, 0, 255, 0, 0, 0, 128, 255]
    assert np.array_equal(np.array(back.convert("RGB")), colorize(labels, PALETTE))


def test_colorize_and_overlay_by_hand() -> None:
    labels = torch.tensor([[1, 2]])
    assert colorize(labels, PALETTE).tolist() == [[[255, 0, 0], [0, 128, 255]]]
    image = np.array([[[100, 100, 100], [10, 20, 30]]], dtype=np.uint8)
    assert np.array_equal(overlay(image, labels, PALETTE, alpha=0.0), image)
    assert overlay(image, labels, PALETTE, alpha=1.0).tolist() == [[[255, 0, 0], [0, 128, 255]]]
    # 0.5·100 + 0.5·255 = 177.5 and 0.5·30 + 0.5·255 = 142.5 round half to even: 178 and 142
    assert overlay(image, labels, PALETTE, alpha=0.5).tolist() == [[[178, 50, 50], [5, 74, 142]]]


def test_labels_beyond_a_palette_png_are_rejected() -> None:
    with pytest.raises(ValueError, match="0..255"):
        label_image(np.array([[0, 300]]), PALETTE)


def test_unreadable_images_name_the_file(tmp_path: Path) -> None:
    missing = tmp_path / "missing.png"
    with pytest.raises(DataError) as err:
        load_image(missing)
    assert str(err.value) == f"{missing}: no such image file"
    text = tmp_path / "notes.png"
    text.write_text("not an image")
    with pytest.raises(DataError) as err:
        load_image(text)
    assert str(err.value) == f"{text}: cannot read image (not a readable image)"
    write_image(tmp_path / "whole.png", 40, 40)
    cut = tmp_path / "cut.png"
    cut.write_bytes((tmp_path / "whole.png").read_bytes()[:200])
    with pytest.raises(DataError, match=f"^{cut}: cannot read image"):
        load_image(cut)


def test_grey_images_become_rgb(tmp_path: Path) -> None:
    Image.fromarray(np.full((4, 5), 7, dtype=np.uint8)).save(tmp_path / "g.png")
    image = load_image(tmp_path / "g.png")
    assert image.shape == (4, 5, 3) and image.dtype == np.uint8 and (image == 7).all()


def test_output_names_disambiguate_repeated_stems() -> None:
    assert output_names(["a/x.png", "b/x.jpg", "c/y.png", "x.png"]) == ["x", "x_2", "y", "x_3"]


def test_predict_files_writes_labels_that_match_the_model(tmp_path: Path) -> None:
    model = pointwise_model()
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    rgb_a = write_image(tmp_path / "a" / "x.png", seed=1)
    write_image(tmp_path / "b" / "x.png", h=6, w=7, seed=2)
    written = predict_files(
        model, [tmp_path / "a" / "x.png", tmp_path / "b" / "x.png"], tmp_path / "out", PALETTE
    )
    assert [(p.name, q.name) for p, q in written] == [
        ("x_label.png", "x_overlay.png"),
        ("x_2_label.png", "x_2_overlay.png"),
    ]
    with torch.no_grad():
        expected = model(normalize_image(rgb_a).unsqueeze(0)).argmax(1)[0].numpy()
    assert np.array_equal(np.array(Image.open(written[0][0])), expected)
    assert np.array_equal(predict_image(model, rgb_a), expected)
    blended = np.array(Image.open(written[0][1]))
    assert np.array_equal(blended, overlay(rgb_a, expected, PALETTE))
    assert Image.open(written[1][0]).size == (7, 6)


def test_one_bad_image_means_nothing_is_written(tmp_path: Path) -> None:
    write_image(tmp_path / "good.png")
    (tmp_path / "bad.png").write_bytes(b"\x89PNG broken")
    with pytest.raises(DataError, match="bad.png: cannot read image"):
        predict_files(
            pointwise_model(), [tmp_path / "good.png", tmp_path / "bad.png"], tmp_path / "out", PALETTE
        )
    assert not (tmp_path / "out").exists()


def test_16_bit_and_float_images_are_refused_not_clipped(tmp_path: Path) -> None:
    """Converting a 16-bit grey PNG to 8-bit RGB would turn almost every pixel into 255."""
    from autodeeplab.data.imageio import read_rgb
    from autodeeplab.data.problems import DataProblemError

    sixteen, floats = tmp_path / "g16.png", tmp_path / "f.tif"
    Image.fromarray((np.arange(12 * 16).reshape(12, 16) * 300).astype(np.uint16)).save(sixteen)
    Image.fromarray(np.linspace(0, 1, 12 * 16, dtype=np.float32).reshape(12, 16)).save(floats)
    for path, mode in ((sixteen, "I;16"), (floats, "F")):
        with pytest.raises(
            DataError, match=rf"{path}: image has more than 8 bits per pixel \(PIL mode '{mode}'\)"
        ):
            load_image(path)
        with pytest.raises(DataProblemError, match="more than 8 bits per pixel"):
            read_rgb(path)
    write_image(tmp_path / "ok.png")
    assert load_image(tmp_path / "ok.png").dtype == np.uint8


def test_a_folder_of_inputs_leaves_out_hidden_files(tmp_path: Path) -> None:
    from autodeeplab.cli.predict import expand_images, expand_volumes

    for name in ("b.png", "a.jpg", "._a.jpg", ".hidden.png"):
        (tmp_path / "in" / name).parent.mkdir(exist_ok=True)
        (tmp_path / "in" / name).write_bytes(b"")  # macOS's ._ files: metadata, never pictures
    assert [p.name for p in expand_images([str(tmp_path / "in")])] == ["a.jpg", "b.png"]
    for name in ("v.nii.gz", "._v.nii.gz", "w.nii"):
        (tmp_path / "vol" / name).parent.mkdir(exist_ok=True)
        (tmp_path / "vol" / name).write_bytes(b"")
    assert [p.name for p in expand_volumes([str(tmp_path / "vol")])] == ["v.nii.gz", "w.nii"]
