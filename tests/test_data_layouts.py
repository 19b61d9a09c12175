"""Each reader on a tiny dataset written here in that layout (no real data committed).

Also home of the writers that the other ``test_data_*`` files use to build broken datasets.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from autodeeplab.data import base
from autodeeplab.data.cityscapes import LABEL_ID_TO_TRAIN_ID
from autodeeplab.data.labels import IGNORE_INDEX, bit_palette
from autodeeplab.data.registry import build_dataset
from autodeeplab.data.transforms import check_crop_size
from autodeeplab.errors import ConfigError

H, W = 6, 8  # tiny images: height, width


def rgb(seed: int, h: int = H, w: int = W) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(h, w, 3), dtype=np.uint8)


def save(path: Path, array: np.ndarray, mode: str | None = None, palette: list | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.fromarray(array) if mode is None else Image.fromarray(array, mode)
    if palette is not None:
        image.putpalette([c for colour in palette for c in colour])
    image.save(path)
    return path


def write_camvid(root: Path, counts: dict[str, int] | None = None, h: int = H, w: int = W) -> Path:
    """CamVid SegNet layout; label of sample i in a split is (i + col) % 12 per column (values 0..11)."""
    for split, count in (counts or {"train": 3, "val": 2, "test": 1}).items():
        lines = []
        (root / split).mkdir(parents=True, exist_ok=True)
        (root / f"{split}annot").mkdir(exist_ok=True)
        for i in range(count):
            name = f"{split}_{i:03d}.png"
            save(root / split / name, rgb(i, h, w))
            label = ((np.arange(w)[None, :] + i) % 12 * np.ones((h, 1))).astype(np.uint8)
            save(root / f"{split}annot" / name, label)
            lines.append(f"/SegNet/CamVid/{split}/{name} /SegNet/CamVid/{split}annot/{name}")
        (root / f"{split}.txt").write_text("\n".join(reversed(lines)) + "\n")  # list order != sorted order
    return root


def write_cityscapes(
    root: Path, split: str = "train", cities=("aachen", "bonn"), h: int = H, w: int = W
) -> Path:
    """Two frames per city, labelIds holding every id 0..33 (row-major, wrapping)."""
    ids = (np.arange(h * w) % 34).reshape(h, w).astype(np.uint8)
    for city in cities:
        for frame in range(2):
            stem = f"{city}_000000_{frame:06d}"
            save(root / "leftImg8bit" / split / city / f"{stem}_leftImg8bit.png", rgb(frame, h, w))
            save(root / "gtFine" / split / city / f"{stem}_gtFine_labelIds.png", ids)
            save(root / "gtFine" / split / city / f"{stem}_gtFine_color.png", rgb(9, h, w))  # not a label
    return root


VOC_IDS = ("2007_000032", "2007_000033", "2007_000039")


def write_voc(root: Path, aug: bool = False) -> Path:
    """VOCdevkit/VOC2012 with palette PNG labels holding 0..20 and 255."""
    voc = root / "VOCdevkit" / "VOC2012"
    values = np.array(list(range(21)) + [255] * 3, dtype=np.uint8).reshape(4, 6)
    for n, sample_id in enumerate(VOC_IDS):
        path = voc / "JPEGImages" / f"{sample_id}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rgb(n, 4, 6)).save(path, quality=95)
        save(voc / "SegmentationClass" / f"{sample_id}.png", values, "P", bit_palette(256))
        if aug:
            save(voc / "SegmentationClassAug" / f"{sample_id}.png", np.full((4, 6), 7, np.uint8))
    lists = voc / "ImageSets" / "Segmentation"
    lists.mkdir(parents=True, exist_ok=True)
    (lists / "train.txt").write_text("\n".join(VOC_IDS[:2]) + "\n")
    (lists / "val.txt").write_text(VOC_IDS[2] + "\n")
    (lists / "trainval.txt").write_text("\n".join(VOC_IDS) + "\n")
    return root


def write_ade20k(root: Path) -> Path:
    ade = root / "ADEChallengeData2016"
    label = np.array([[0, 1, 2, 150], [75, 0, 149, 3]], dtype=np.uint8)
    for folder, count in (("training", 2), ("validation", 1)):
        for i in range(count):
            stem = f"ADE_{folder[:5]}_{i:08d}"
            path = ade / "images" / folder / f"{stem}.jpg"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(rgb(i, 2, 4)).save(path)
            save(ade / "annotations" / folder / f"{stem}.png", label)
    return root


def write_folder(root: Path, count: int = 6, classes: dict | None = None, nested: bool = False) -> Path:
    """Plain folder, masks hold 0..2 and 9 (the ignore value of the default classes file)."""
    spec = classes or {"names": ["ground", "tree", "house"], "ignore": 9}
    (root).mkdir(parents=True, exist_ok=True)
    (root / "classes.yaml").write_text(json.dumps(spec))  # JSON is YAML
    mask = np.array([[0, 1, 2, 9]] * 3, dtype=np.uint8)
    for i in range(count):
        sub = ("train" if i % 2 == 0 else "val") if nested else ""
        save(root / "images" / sub / f"img{i}.png", rgb(i, 3, 4))
        save(root / "masks" / sub / f"img{i}.png", mask)
    return root


# -- CamVid -------------------------------------------------------------------------------------------
def test_camvid_reads_list_order_and_maps_void_to_ignore(tmp_path):
    root = write_camvid(tmp_path)
    data = build_dataset("camvid", root, "train")
    assert len(data) == 3 and data.num_classes == 11 and data.ignore_index == IGNORE_INDEX
    assert [image.name for image, _ in data.samples] == ["train_002.png", "train_001.png", "train_000.png"]
    image, mask = data.load_raw(0)  # train_002: label row is (col + 2) % 12
    expected = (np.arange(W) + 2) % 12
    expected[expected == 11] = IGNORE_INDEX
    assert np.array_equal(mask[0], expected) and mask.dtype == np.int64
    assert np.array_equal(image, rgb(2))
    x, y = data[0]
    assert x.shape == (3, H, W) and x.dtype == torch.float32 and y.dtype == torch.int64
    assert len(build_dataset("camvid", root, "val")) == 2 and len(build_dataset("camvid", root, "test")) == 1


def test_camvid_without_list_files_pairs_by_name(tmp_path):
    root = write_camvid(tmp_path)
    for split in ("train", "val", "test"):
        (root / f"{split}.txt").unlink()
    data = build_dataset("camvid", root, "train")
    assert [p.name for p, _ in data.samples] == ["train_000.png", "train_001.png", "train_002.png"]


# -- Cityscapes ---------------------------------------------------------------------------------------
# The official table written out by hand: label id -> train id (255 = ignored), ids 0..33.
CITYSCAPES_EXPECTED = [255] * 7 + [0, 1, 255, 255, 2, 3, 4, 255, 255, 255, 5, 255, 6, 7, 8, 9, 10, 11, 12, 13]
CITYSCAPES_EXPECTED += [14, 15, 255, 255, 16, 17, 18]


def test_cityscapes_label_id_to_train_id_table(tmp_path):
    assert len(CITYSCAPES_EXPECTED) == 34
    assert {k: v for k, v in enumerate(CITYSCAPES_EXPECTED) if v != 255} == LABEL_ID_TO_TRAIN_ID
    data = build_dataset("cityscapes", write_cityscapes(tmp_path), "train")
    assert len(data) == 4 and data.num_classes == 19
    _, mask = data.load_raw(0)
    ids = (np.arange(H * W) % 34).reshape(H, W)
    assert np.array_equal(mask, np.array(CITYSCAPES_EXPECTED)[ids])


def test_cityscapes_prefers_label_train_ids(tmp_path):
    root = write_cityscapes(tmp_path)
    train_ids = np.full((H, W), 18, np.uint8)
    train_ids[0, 0] = 255
    save(root / "gtFine/train/bonn/bonn_000000_000001_gtFine_labelTrainIds.png", train_ids)
    data = build_dataset("cityscapes", root, "train")
    paths = [label.name for _, label in data.samples]
    assert paths.count("bonn_000000_000001_gtFine_labelTrainIds.png") == 1 and len(paths) == 4
    index = paths.index("bonn_000000_000001_gtFine_labelTrainIds.png")
    assert np.array_equal(data.load_raw(index)[1], train_ids)


# -- PASCAL VOC -------------------------------------------------------------------------------------
def test_voc_palette_decoding(tmp_path):
    palette = bit_palette(256)
    assert palette[:4] == [(0, 0, 0), (128, 0, 0), (0, 128, 0), (128, 128, 0)]
    assert palette[15] == (192, 128, 128) and palette[255] == (224, 224, 192)  # person, boundary
    data = build_dataset("voc", write_voc(tmp_path), "trainval")
    assert len(data) == 3 and data.num_classes == 21 and data.palette[1] == (128, 0, 0)
    _, mask = data.load_raw(1)
    assert np.array_equal(mask.ravel(), list(range(21)) + [255] * 3)


def test_voc_rgb_labels_decode_through_the_colour_map(tmp_path):
    root = write_voc(tmp_path)
    label = root / "VOCdevkit/VOC2012/SegmentationClass" / f"{VOC_IDS[0]}.png"
    indices = np.array(Image.open(label))
    save(label, np.array(bit_palette(256), np.uint8)[indices])  # same label as an RGB picture
    _, mask = build_dataset("voc", root, "train").load_raw(0)
    assert np.array_equal(mask, indices)


def test_voc_uses_segmentation_class_aug_when_present(tmp_path):
    root = write_voc(tmp_path, aug=True)
    assert (build_dataset("voc", root, "val").load_raw(0)[1] == 7).all()
    assert build_dataset("voc", root, "val", augmented=False).load_raw(0)[1].max() == 255


def test_voc_crop_check_uses_the_largest_image_of_the_split(tmp_path):
    """VOC images are at most 500x500: the paper's 513 crop at scale 2.0 fits, a 3000 crop is refused."""
    root = write_voc(tmp_path)
    voc = root / "VOCdevkit" / "VOC2012"
    for sample_id, (h, w) in zip(VOC_IDS[:2], [(500, 333), (375, 500)], strict=True):
        Image.fromarray(rgb(0, h, w)).save(voc / "JPEGImages" / f"{sample_id}.jpg")
        save(
            voc / "SegmentationClass" / f"{sample_id}.png", np.zeros((h, w), np.uint8), "P", bit_palette(256)
        )
    data = build_dataset("voc", root, "train")
    assert data.image_size == (500, 500)  # largest height and largest width, from the JPEG headers
    check_crop_size(513, data.image_size, 2.0)
    with pytest.raises(ConfigError) as info:
        check_crop_size(3000, data.image_size, 2.0)
    assert str(info.value) == (
        "crop_size: 3000x3000 is larger than allowed: the images are at most 500x500 (HxW),"
        " 1000x1000 at the largest scale 2"
    )
    assert build_dataset("voc", root, "val").image_size == (4, 6)  # each split its own


def test_image_size_of_layouts_whose_sizes_vary_is_read_from_headers_once(tmp_path, monkeypatch):
    assert build_dataset("ade20k", write_ade20k(tmp_path / "ade"), "train").image_size == (2, 4)
    root = write_folder(tmp_path / "folder", count=3)  # 3x4 images, and one 5x2
    save(root / "images" / "img2.png", rgb(2, 5, 2))
    save(root / "masks" / "img2.png", np.zeros((5, 2), np.uint8))
    folder = build_dataset("folder", root, "all")
    opened = []
    real_read_size = base.read_size
    monkeypatch.setattr(base, "read_size", lambda path: opened.append(path) or real_read_size(path))
    assert folder.image_size == (5, 4)  # the largest height of one image, the largest width of others
    assert folder.image_size == (5, 4) and len(opened) == 3  # one header per image, read once


# -- ADE20K -----------------------------------------------------------------------------------------
def test_ade20k_shifts_labels_and_ignores_zero(tmp_path):
    data = build_dataset("ade20k", write_ade20k(tmp_path), "train")
    assert len(data) == 2 and data.num_classes == 150 and len(data.palette) == 150
    assert data.class_names[0] == "wall" and data.class_names[149] == "flag"
    _, mask = data.load_raw(0)
    assert np.array_equal(mask, [[255, 0, 1, 149], [74, 255, 148, 2]])
    assert len(build_dataset("ade20k", tmp_path / "ADEChallengeData2016", "val")) == 1


# -- plain folder -----------------------------------------------------------------------------------
def test_folder_reads_classes_file_and_maps_ignore_value(tmp_path):
    data = build_dataset("folder", write_folder(tmp_path), "all")
    assert data.class_names == ("ground", "tree", "house") and len(data) == 6
    assert data.palette == bit_palette(3)
    assert np.array_equal(data.load_raw(0)[1][0], [0, 1, 2, 255])


def test_folder_flat_split_is_seeded_and_disjoint(tmp_path):
    root = write_folder(tmp_path, count=10)
    parts = {name: build_dataset("folder", root, name) for name in ("train", "val", "test")}
    stems = [{p.stem for p, _ in d.samples} for d in parts.values()]
    assert sum(map(len, stems)) == 10 and len(set().union(*stems)) == 10
    assert all(stems) and parts["train"].split_record == parts["val"].split_record


def test_folder_split_subfolders_and_split_lists(tmp_path):
    nested = build_dataset("folder", write_folder(tmp_path / "a", nested=True), "val")
    assert [p.stem for p, _ in nested.samples] == ["img1", "img3", "img5"]
    root = write_folder(tmp_path / "b")
    (root / "splits").mkdir()
    (root / "splits" / "mine.txt").write_text("img4\nimg0\n")
    assert [p.stem for p, _ in build_dataset("folder", root, "mine").samples] == ["img0", "img4"]
    with pytest.raises(ConfigError, match=r"^split: 'train' is not a split of folder \(choose from: mine\)$"):
        build_dataset("folder", root, "train")


def test_folder_colour_masks_with_colours_in_classes_file(tmp_path):
    spec = {"names": ["a", "b"], "colours": [[0, 0, 0], [255, 0, 0]], "ignore_colour": [255, 255, 255]}
    root = write_folder(tmp_path, count=1, classes=spec)
    save(
        root / "masks" / "img0.png",
        np.array([[[0, 0, 0], [255, 0, 0], [255, 255, 255], [0, 0, 0]]] * 3, np.uint8),
    )
    data = build_dataset("folder", root, "all")
    assert data.palette == [(0, 0, 0), (255, 0, 0)]
    assert np.array_equal(data.load_raw(0)[1][0], [0, 1, 255, 0])


def test_list_files_saved_with_a_byte_order_mark_read_as_without(tmp_path):
    """Windows editors start a text file with a BOM: it is no part of the first name."""
    camvid = write_camvid(tmp_path / "camvid")
    voc = write_voc(tmp_path / "voc")
    lists = [camvid / "train.txt", voc / "VOCdevkit" / "VOC2012" / "ImageSets" / "Segmentation" / "train.txt"]
    before = [build_dataset(name, root, "train").samples for name, root in (("camvid", camvid), ("voc", voc))]
    for path in lists:
        path.write_text("\ufeff" + path.read_text(encoding="utf-8"), encoding="utf-8")
    after = [build_dataset(name, root, "train").samples for name, root in (("camvid", camvid), ("voc", voc))]
    assert after == before
