"""Broken data gets a clear answer: every problem listed at once, the same message when met lazily."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from test_data_layouts import H, W, save, write_camvid, write_cityscapes, write_folder, write_voc

from autodeeplab.cli.main import main
from autodeeplab.data.checks import check_dataset
from autodeeplab.data.prepare import prepare_cityscapes
from autodeeplab.data.problems import DataProblem
from autodeeplab.data.registry import build_dataset
from autodeeplab.errors import ConfigError, DataError


def messages(problems: list[DataProblem]) -> list[str]:
    return [str(p) for p in problems]


def lazy_message(dataset, image_name: str) -> str:
    """The error training would stop with when it reaches the sample whose image is ``image_name``."""
    index = [image.name for image, _ in dataset.samples].index(image_name)
    with pytest.raises(DataError) as info:
        dataset[index]
    return str(info.value)


def test_clean_dataset_has_no_problems(tmp_path):
    assert check_dataset("camvid", write_camvid(tmp_path)) == []
    assert check_dataset("synthetic", None, ["val"]) == []


def test_image_without_label_and_label_without_image(tmp_path):
    root = write_camvid(tmp_path)
    (root / "trainannot" / "train_001.png").unlink()
    (root / "val" / "val_000.png").unlink()
    assert messages(check_dataset("camvid", root)) == [
        f"{root}/train/train_001.png: image without label: expected label file"
        f" {root}/trainannot/train_001.png",
        f"{root}/valannot/val_000.png: label without image: expected image file {root}/val/val_000.png",
    ]
    with pytest.raises(DataError) as info:  # training refuses at once, with the same line
        build_dataset("camvid", root, "train")
    assert str(info.value) == messages(check_dataset("camvid", root, ["train"]))[0]


def test_orphans_in_a_plain_folder(tmp_path):
    root = write_folder(tmp_path, count=2)
    (root / "masks" / "img0.png").rename(root / "masks" / "other.png")
    assert messages(check_dataset("folder", root, ["all"])) == [
        f"{root}/images/img0.png: image without label: expected label file {root}/masks/img0.png",
        f"{root}/masks/other.png: label without image: expected image file {root}/images/other.*",
    ]


def test_split_list_entry_with_neither_image_nor_mask_in_a_plain_folder(tmp_path):
    root = write_folder(tmp_path, count=3)
    (root / "splits").mkdir()
    list_file = root / "splits" / "mine.txt"
    list_file.write_text("img0\n\nghost\nimg2\n")  # line 3 names a sample that is not there
    expected = f"{list_file}: line 3: 'ghost' has neither image nor label"
    assert messages(check_dataset("folder", root)) == [expected]
    with pytest.raises(DataError) as info:  # training and search refuse the split at once, same line
        build_dataset("folder", root, "mine")
    assert str(info.value) == expected
    listed = build_dataset("folder", root, "mine", strict=False)
    assert [p.stem for p, _ in listed.samples] == ["img0", "img2"]


def test_size_mismatch(tmp_path):
    root = write_camvid(tmp_path)
    label = root / "trainannot" / "train_002.png"
    save(label, np.zeros((H + 1, W), np.uint8))
    expected = f"{label}: size mismatch: image train_002.png is {W}x{H} (WxH) but its label is {W}x{H + 1}"
    assert messages(check_dataset("camvid", root)) == [expected]
    assert lazy_message(build_dataset("camvid", root, "train"), "train_002.png") == expected


def test_size_mismatch_and_values_outside_the_class_set_are_both_reported(tmp_path):
    root = write_camvid(tmp_path)
    label = root / "trainannot" / "train_002.png"
    save(label, np.full((H + 1, W), 40, np.uint8))
    expected = (
        f"{label}: size mismatch: image train_002.png is {W}x{H} (WxH) but its label is {W}x{H + 1};"
        " label values 40 are outside the class set (expected 0..10, or 11 (ignore))"
    )
    assert messages(check_dataset("camvid", root)) == [expected]
    assert lazy_message(build_dataset("camvid", root, "train"), "train_002.png") == expected


def test_label_values_outside_the_class_set(tmp_path):
    root = write_camvid(tmp_path)
    label = root / "valannot" / "val_001.png"
    save(label, np.resize(np.array([0, 12, 11, 200], np.uint8), (H, W)))
    expected = f"{label}: label values 12, 200 are outside the class set (expected 0..10, or 11 (ignore))"
    assert messages(check_dataset("camvid", root)) == [expected]
    assert lazy_message(build_dataset("camvid", root, "val"), "val_001.png") == expected


def test_label_values_outside_voc_and_cityscapes_class_sets(tmp_path):
    voc = write_voc(tmp_path / "voc")
    label = voc / "VOCdevkit/VOC2012/SegmentationClass/2007_000039.png"
    save(label, np.full((4, 6), 21, np.uint8))
    assert messages(check_dataset("voc", voc, ["val"])) == [
        f"{label}: label values 21 are outside the class set (expected 0..20, or 255 (ignore))"
    ]
    city = write_cityscapes(tmp_path / "city")
    label = city / "gtFine/train/aachen/aachen_000000_000001_gtFine_labelIds.png"
    save(label, np.full((H, W), 34, np.uint8))
    assert messages(check_dataset("cityscapes", city, ["train"])) == [
        f"{label}: label values 34 are outside the class set (expected label ids 0..33)"
    ]


def test_unreadable_and_truncated_files(tmp_path):
    root = write_camvid(tmp_path)
    garbage = root / "train" / "train_000.png"
    garbage.write_bytes(b"this is not an image")
    truncated = root / "testannot" / "test_000.png"
    save(truncated, np.random.default_rng(0).integers(0, 11, size=(H, W), dtype=np.uint8))
    truncated.write_bytes(truncated.read_bytes()[:-30])
    found = messages(check_dataset("camvid", root))
    assert len(found) == 2
    assert found[0].startswith(f"{garbage}: unreadable or truncated image file (cannot identify image file")
    assert found[1].startswith(f"{truncated}: unreadable or truncated label file (")
    assert lazy_message(build_dataset("camvid", root, "test"), "test_000.png") == found[1]


def test_empty_split(tmp_path):
    root = write_camvid(tmp_path, {"train": 2, "val": 0, "test": 1})
    assert messages(check_dataset("camvid", root)) == [f"{root}: split 'val' is empty: no samples found"]
    with pytest.raises(DataError, match=r": split 'val' is empty: no samples found$"):
        build_dataset("camvid", root, "val")


@pytest.mark.parametrize(
    ("name", "missing", "layout"),
    [
        ("camvid", "train", "CamVid SegNet layout"),
        ("cityscapes", "leftImg8bit/train", "Cityscapes layout"),
        ("voc", "JPEGImages", "PASCAL VOC 2012 layout"),
        ("ade20k", "images/training", "ADE20K SceneParsing layout"),
        ("folder", "classes.yaml", "a plain folder"),
    ],
)
def test_wrong_folder_layout_says_which_layout_was_expected(tmp_path, name, missing, layout):
    (tmp_path / "something_else").mkdir()
    found = messages(check_dataset(name, tmp_path, ["train"]))
    assert len(found) == 1
    assert found[0].startswith(f"{tmp_path / missing}: wrong folder layout: not found; expected {layout}")


def test_every_problem_is_reported_at_once(tmp_path):
    root = write_camvid(tmp_path)
    (root / "trainannot" / "train_000.png").unlink()
    save(root / "trainannot" / "train_001.png", np.full((H, W), 99, np.uint8))
    (root / "val" / "val_001.png").write_bytes(b"")
    save(root / "testannot" / "test_000.png", np.zeros((2, 2), np.uint8))
    found = check_dataset("camvid", root)
    assert [Path(p.path).name for p in found] == [
        "train_000.png",
        "train_001.png",
        "val_001.png",
        "test_000.png",
    ]
    (root / "train" / "train_002.png").unlink()  # a second listing problem: construction finds both
    with pytest.raises(
        DataError, match=r"\(and 1 more problems; run 'autodeeplab data check' to list them\)$"
    ):
        build_dataset("camvid", root, "train")


def test_bad_classes_file_names_the_field(tmp_path):
    root = write_folder(tmp_path, classes={"names": ["a", "a"]})
    with pytest.raises(DataError) as info:
        build_dataset("folder", root, "all")
    assert (
        str(info.value)
        == f"{root / 'classes.yaml'}: field 'names': class names must be unique ('a' is listed twice)"
    )


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (
            lambda: build_dataset("mnist", None, "train"),
            "dataset: 'mnist' is not a known dataset (choose from: ",
        ),
        (
            lambda: build_dataset("camvid", "/x", "dev"),
            "split: 'dev' is not a split of camvid (choose from: ",
        ),
        (lambda: build_dataset("camvid", None, "train"), "data_root: the camvid dataset needs a data root"),
        (lambda: build_dataset("camvid", "/x", "train", size=3), "size: not an option of the camvid dataset"),
    ],
)
def test_bad_values_raise_config_errors_naming_the_field(call, message):
    with pytest.raises(ConfigError) as info:
        call()
    assert str(info.value).startswith(message)


def test_cli_check_lists_problems_and_exits_2(tmp_path, capsys):
    root = write_camvid(tmp_path)
    (root / "trainannot" / "train_000.png").unlink()
    save(root / "valannot" / "val_000.png", np.full((H, W), 50, np.uint8))
    code = main(["data", "check", "--dataset", "camvid", "--data-root", str(root)])
    out, err = capsys.readouterr()
    assert code == 2
    assert out.splitlines() == messages(check_dataset("camvid", root))
    assert len(out.splitlines()) == 2
    assert err.splitlines()[-1] == f"camvid at {root}: 2 problems in 5 samples (train 2, val 2, test 1)"
    assert err.splitlines()[0] == "warning: classes with no pixels in train: sky, bicyclist"  # tiny masks


def test_cli_check_clean_dataset_and_bad_split(tmp_path, capsys):
    root = write_camvid(tmp_path)
    assert main(["data", "check", "--dataset", "camvid", "--data-root", str(root), "--split", "val"]) == 0
    assert capsys.readouterr().out == f"camvid at {root}: no problems in 2 samples (val 2)\n"
    assert main(["data", "check", "--dataset", "camvid", "--data-root", str(root), "--split", "dev"]) == 2
    err = capsys.readouterr().err
    assert (
        err
        == "autodeeplab data: error: split: 'dev' is not a split of camvid (choose from: train, val, test)\n"
    )


def test_prepare_cityscapes_writes_a_readable_half_resolution_copy(tmp_path):
    full = write_cityscapes(tmp_path / "full", h=8, w=16)
    out = tmp_path / "half"
    assert prepare_cityscapes(full, out, 0.5, splits=("train",)) == 8
    half = build_dataset("cityscapes", out, "train")
    original = build_dataset("cityscapes", full, "train")
    assert len(half) == 4 and half.image_size == (512, 1024)
    image, mask = half.load_raw(0)
    assert image.shape == (4, 8, 3) and half.label_path(0).name.endswith("_gtFine_labelTrainIds.png")
    small = np.asarray(
        Image.fromarray(original.load_raw(0)[1].astype(np.uint8)).resize((8, 4), Image.NEAREST)
    )
    assert np.array_equal(mask, small)
    assert prepare_cityscapes(full, out, 0.5, splits=("train",)) == 0  # resumes: nothing left to write


def test_prepare_never_writes_into_a_foreign_folder(tmp_path):
    full = write_cityscapes(tmp_path / "full")
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    with pytest.raises(
        DataError, match="is not an empty folder nor a prepared copy; refusing to write into it"
    ):
        prepare_cityscapes(full, out, 0.5, splits=("train",))
    assert [p.name for p in out.iterdir()] == ["notes.txt"]
    prepare_cityscapes(full, tmp_path / "half", 0.5, splits=("train",))
    with pytest.raises(DataError, match="holds a prepared copy made with other settings"):
        prepare_cityscapes(full, tmp_path / "half", 0.25, splits=("train",))
