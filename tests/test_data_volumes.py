"""3D volumes: reading NIfTI, the nifti and msd layouts, their splits, patches, and every bad input named.

Tiny volumes (6×7×5 voxels) are written with nibabel into ``tmp_path``; one test reads the real hippocampus
data in ``../shared/data/hippocampus`` and skips when it is absent.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import SHARED_DATA

nib = pytest.importorskip("nibabel")

from autodeeplab.data.folder import seeded_split  # noqa: E402
from autodeeplab.data.labels import IGNORE_INDEX  # noqa: E402
from autodeeplab.data.nifti import read_image_volume, read_label_volume, zscore_nonzero  # noqa: E402
from autodeeplab.data.problems import DataProblemError  # noqa: E402
from autodeeplab.data.registry import build_dataset  # noqa: E402
from autodeeplab.data.volume_transforms import PatchTransform  # noqa: E402
from autodeeplab.data.volumes import sorted_split  # noqa: E402

SHAPE = (6, 7, 5)
AFFINE = np.array([[1.5, 0, 0, -10.0], [0, 2.0, 0, 4.0], [0, 0, 2.5, 7.0], [0, 0, 0, 1]])
HIPPOCAMPUS = SHARED_DATA / "hippocampus"


def save(path: Path, array: np.ndarray, affine: np.ndarray = AFFINE) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(array, affine), str(path))
    return path


def image(seed: int, shape=SHAPE) -> np.ndarray:
    return np.random.default_rng(seed).uniform(1, 100, shape).astype(np.float32)


def label(seed: int, shape=SHAPE, classes: int = 3) -> np.ndarray:
    mask = np.zeros(shape, np.uint8)
    mask[1:4, 2:5, 1:3] = 1 + seed % (classes - 1)
    mask[0, 0, 0] = classes - 1  # every volume holds every class value
    mask[0, 0, 1] = 1
    return mask


def write_nifti_folder(root: Path, count: int = 3) -> Path:
    for i in range(count):
        save(root / "images" / f"case_{i:03d}.nii.gz", image(i))
        save(root / "labels" / f"case_{i:03d}.nii.gz", label(i))
    return root


def write_msd(root: Path, count: int = 2, modalities: int = 2) -> Path:
    entries = []
    for i in range(count):
        pixels = np.stack([image(10 * i + c) for c in range(modalities)], axis=-1)  # channels last on disk
        save(root / "imagesTr" / f"vol_{i}.nii.gz", pixels if modalities > 1 else pixels[..., 0])
        save(root / "labelsTr" / f"vol_{i}.nii.gz", label(i))
        entries.append({"image": f"./imagesTr/vol_{i}.nii.gz", "label": f"./labelsTr/vol_{i}.nii.gz"})
    spec = {
        "name": "tiny",
        "modality": {str(c): f"MR{c}" for c in range(modalities)},
        "labels": {"0": "background", "1": "anterior", "2": "posterior"},
        "training": entries,
    }
    (root / "dataset.json").write_text(json.dumps(spec))
    return root


def one_line_problem(call, path: Path) -> str:
    """Run ``call``; it must raise a DataProblemError of one line that names ``path``; return the line."""
    with pytest.raises(DataProblemError) as info:
        call()
    text = str(info.value)
    assert "\n" not in text and text.startswith(f"{path}: "), text
    return text


# -- reading ---------------------------------------------------------------------------------------------


def test_nifti_round_trip_keeps_values_affine_and_spacing_and_casts_dtypes(tmp_path):
    as_uint8 = np.arange(np.prod(SHAPE), dtype=np.int64).reshape(SHAPE) % 251
    floats = image(0)
    labels = label(0).astype(np.float32)  # whole numbers stored as floats
    for name, stored in (("u8", as_uint8.astype(np.uint8)), ("f32", floats)):
        read = read_image_volume(save(tmp_path / f"{name}.nii.gz", stored))
        assert read.data.dtype == np.float32 and read.data.shape == (1, *SHAPE)
        np.testing.assert_array_equal(read.data[0], stored.astype(np.float32))
        np.testing.assert_allclose(read.affine, AFFINE)
        assert read.spacing == (1.5, 2.0, 2.5)
    read = read_label_volume(save(tmp_path / "label.nii", labels))  # uncompressed too
    assert read.data.dtype == np.int64 and read.data.shape == SHAPE
    np.testing.assert_array_equal(read.data, labels.astype(np.int64))
    np.testing.assert_allclose(read.affine, AFFINE)
    assert read.spacing == (1.5, 2.0, 2.5)


def test_label_values_that_are_not_whole_numbers_are_a_problem(tmp_path):
    path = save(tmp_path / "label.nii.gz", np.full(SHAPE, 1.5, np.float32))
    assert "1.5 are not whole numbers" in one_line_problem(lambda: read_label_volume(path), path)


def test_zscore_over_the_nonzero_voxels_matches_a_hand_computation():
    volume = np.zeros((2, 2, 2, 2), np.float32)
    volume[0, 0, 0, :] = [2.0, 4.0]  # channel 0: nonzero voxels 2, 4, 6 (mean 4, std sqrt(8/3))
    volume[0, 1, 1, 1] = 6.0
    volume[1] = 5.0  # channel 1: constant, only centred
    out = zscore_nonzero(volume)
    std = np.sqrt(((2 - 4) ** 2 + 0 + (6 - 4) ** 2) / 3)
    expected0 = (volume[0] - 4.0) / std  # the zeros are shifted and scaled too
    np.testing.assert_allclose(out[0], expected0, rtol=1e-6)
    assert out[0, 0, 0, 0] == pytest.approx(-2 / std) and out[0, 1, 0, 0] == pytest.approx(-4 / std)
    np.testing.assert_allclose(out[1], np.zeros((2, 2, 2)))
    assert out.dtype == np.float32


# -- layouts ---------------------------------------------------------------------------------------------


def test_nifti_folder_gives_channel_first_float_images_and_int64_masks(tmp_path):
    root = write_nifti_folder(tmp_path / "data")
    data = build_dataset("nifti", root, "all")
    assert (len(data), data.in_channels, data.spatial_dims) == (3, 1, 3)
    assert [data.volume_id(i) for i in range(3)] == ["case_000", "case_001", "case_002"]
    pixels, mask = data[1]
    assert pixels.shape == (1, *SHAPE) and str(pixels.dtype) == "torch.float32"
    assert mask.shape == SHAPE and str(mask.dtype) == "torch.int64"
    np.testing.assert_array_equal(mask.numpy(), label(1))
    np.testing.assert_allclose(pixels.numpy(), zscore_nonzero(image(1)[None]), rtol=1e-6)
    assert data.spacing(1) == (1.5, 2.0, 2.5)


def test_msd_reads_dataset_json_and_a_4d_image_as_channels(tmp_path):
    root = write_msd(tmp_path / "task")
    data = build_dataset("msd", root, "all")
    assert data.class_names == ("background", "anterior", "posterior")
    assert data.in_channels == 2 and len(data) == 2
    pixels, mask = data[0]
    assert pixels.shape == (2, *SHAPE) and mask.shape == SHAPE
    stacked = np.stack([image(0), image(1)])  # the channels of vol_0, channels-last on disk
    np.testing.assert_allclose(pixels.numpy(), zscore_nonzero(stacked), rtol=1e-6)
    np.testing.assert_array_equal(mask.numpy(), label(0))


def test_msd_image_with_fewer_channels_than_its_modalities_is_named(tmp_path):
    root = write_msd(tmp_path / "task", modalities=2)
    path = save(root / "imagesTr" / "vol_1.nii.gz", image(3))  # 3D: one channel
    data = build_dataset("msd", root, "all")
    message = one_line_problem(lambda: data[1], path)
    assert message.endswith("1 channel, but dataset.json's 'modality' names 2")


# -- splits ----------------------------------------------------------------------------------------------


def test_sorted_split_puts_the_last_sorted_ids_in_test():
    ids = [f"id{i}" for i in (3, 0, 9, 1, 8, 2, 7, 4, 6, 5)]
    split = sorted_split(ids, (0.1, 0.2))
    assert [len(split[k]) for k in ("train", "val", "test")] == [7, 1, 2]
    assert split["test"] == ["id8", "id9"] and split["val"] == ["id7"]


def test_sorted_and_seeded_splits_of_a_folder(tmp_path):
    root = write_nifti_folder(tmp_path / "data", count=10)
    ids = [f"case_{i:03d}" for i in range(10)]
    sizes = {}
    for split in ("train", "val", "test"):
        data = build_dataset("nifti", root, split, split_order="sorted", split_fractions=(0.1, 0.2))
        sizes[split] = [data.volume_id(i) for i in range(len(data))]
    assert [len(sizes[k]) for k in ("train", "val", "test")] == [7, 1, 2]
    assert sizes["test"] == ids[-2:]
    seeded = {
        split: {build_dataset("nifti", root, split, split_seed=3).volume_id(i) for i in range(n)}
        for split, n in (
            (s, len(build_dataset("nifti", root, s, split_seed=3))) for s in ("train", "val", "test")
        )
    }
    assert seeded["train"].isdisjoint(seeded["val"]) and seeded["train"].isdisjoint(seeded["test"])
    assert seeded["val"].isdisjoint(seeded["test"])
    assert seeded["train"] | seeded["val"] | seeded["test"] == set(ids)
    record = seeded_split(set(ids), (0.15, 0.15), 3)
    assert {k: set(v) for k, v in record.items()} == seeded


# -- patches ---------------------------------------------------------------------------------------------


def test_patch_shape_seeded_draws_padding_and_foreground():
    rng = np.random.default_rng(0)
    volume = rng.normal(size=(2, 12, 10, 9)).astype(np.float32)
    mask = np.zeros((12, 10, 9), np.int64)
    mask[11, 0, 8] = 2  # one foreground voxel, in a corner
    patch = PatchTransform((4, 5, 3), foreground_prob=0.0)
    x, y = patch(volume, mask, np.random.default_rng(5))
    assert tuple(x.shape) == (2, 4, 5, 3) and tuple(y.shape) == (4, 5, 3)
    again = patch(volume, mask, np.random.default_rng(5))
    assert all(a.equal(b) for a, b in zip((x, y), again, strict=True))
    seeking = PatchTransform((4, 5, 3), foreground_prob=1.0)
    for seed in range(5):
        _, y = seeking(volume, mask, np.random.default_rng(seed))
        assert (y == 2).sum() == 1
    small = np.ones((1, 3, 3, 3), np.float32)
    x, y = PatchTransform((4, 5, 6), foreground_prob=0.0, flip=False)(
        small, np.ones((3, 3, 3), np.int64), rng
    )
    assert tuple(x.shape) == (1, 4, 5, 6) and tuple(y.shape) == (4, 5, 6)
    assert int((y == IGNORE_INDEX).sum()) == 4 * 5 * 6 - 27 and int((y == 1).sum()) == 27
    assert float(x.sum()) == 27.0  # the image is padded with zeros
    np.testing.assert_array_equal(y[0:3, 1:4, 1:4].numpy(), np.ones((3, 3, 3)))  # centred: (0,1) (1,1) (1,2)


# -- classes ---------------------------------------------------------------------------------------------


def test_classes_from_label_values_without_a_classes_file_and_the_warning(tmp_path):
    root = write_nifti_folder(tmp_path / "data")
    data = build_dataset("nifti", root, "all")
    assert data.class_names == ("background", "class 1", "class 2")
    assert data.warnings == [
        f"{root}: no classes file; 3 classes from the label values 0..2 "
        "(name them in classes.yaml: 'names: [background, ...]')"
    ]


def test_label_values_with_a_gap_are_refused_with_the_file_to_write(tmp_path):
    root = tmp_path / "data"
    for i in range(2):
        save(root / "images" / f"c{i}.nii.gz", image(i))
        save(root / "labels" / f"c{i}.nii.gz", np.where(label(0) > 0, 2, 0).astype(np.uint8))
    message = one_line_problem(lambda: build_dataset("nifti", root, "all"), root / "labels")
    assert "label values 0, 2 are not 0..K-1 with none missing (1 never occur)" in message
    assert f"in {root / 'classes.yaml'} ('values:' and 'ignore:')" in message


def test_a_classes_file_is_honoured(tmp_path):
    root = tmp_path / "data"
    stored = label(0) * 10  # values 0, 10, 20
    save(root / "images" / "c0.nii.gz", image(0))
    save(root / "labels" / "c0.nii.gz", stored)
    (root / "classes.yaml").write_text("values: {0: background, 10: left, 20: right}\n")
    data = build_dataset("nifti", root, "all")
    assert data.class_names == ("background", "left", "right") and data.warnings == []
    np.testing.assert_array_equal(data[0][1].numpy(), label(0))


# -- bad inputs, one line each naming the file ------------------------------------------------------------


def test_image_and_label_of_different_shapes(tmp_path):
    root = write_nifti_folder(tmp_path / "data", count=1)
    path = save(root / "labels" / "case_000.nii.gz", label(0, shape=(6, 7, 4)))
    message = one_line_problem(lambda: build_dataset("nifti", root, "all")[0], path)
    assert message.endswith("label is 6×7×4 voxels but its image case_000.nii.gz is 6×7×5")


def test_affines_that_differ_beyond_the_tolerance(tmp_path):
    root = write_nifti_folder(tmp_path / "data", count=1)
    moved = AFFINE.copy()
    moved[0, 3] += 0.5
    path = save(root / "labels" / "case_000.nii.gz", label(0), moved)
    message = one_line_problem(lambda: build_dataset("nifti", root, "all")[0], path)
    assert "affine differs from its image case_000.nii.gz's by up to 0.5" in message
    close = AFFINE.copy()
    close[0, 3] += 1e-5  # writers' rounding: accepted
    save(root / "labels" / "case_000.nii.gz", label(0).astype(np.int16), close)
    build_dataset("nifti", root, "all")[0]


def test_label_values_outside_the_classes_of_dataset_json(tmp_path):
    root = write_msd(tmp_path / "task")
    path = save(root / "labelsTr" / "vol_1.nii.gz", np.full(SHAPE, 3, np.uint8))
    message = one_line_problem(lambda: build_dataset("msd", root, "all")[1], path)
    assert message.endswith("label values 3 are outside the class set (expected 0..2)")


def test_a_4d_image_in_the_nifti_layout(tmp_path):
    root = write_nifti_folder(tmp_path / "data", count=1)
    path = save(root / "images" / "case_000.nii.gz", np.stack([image(0), image(1)], axis=-1))
    message = one_line_problem(lambda: build_dataset("nifti", root, "all")[0], path)
    assert "4D image (6×7×5×2) where a 3D volume is expected" in message
    assert "--dataset msd" in message and "'modality'" in message


def truncate(path: Path) -> Path:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def test_a_truncated_nii_gz(tmp_path):
    root = write_nifti_folder(tmp_path / "data", count=1)
    path = truncate(root / "images" / "case_000.nii.gz")
    message = one_line_problem(lambda: build_dataset("nifti", root, "all")[0], path)
    assert "unreadable NIfTI volume: truncated file" in message
    # cut by its last bytes only (the gzip trailer): nibabel alone would read it
    whole = save(tmp_path / "whole.nii.gz", image(0))
    whole.write_bytes(whole.read_bytes()[:-4])
    assert "truncated file" in one_line_problem(lambda: read_image_volume(whole), whole)


def test_an_image_without_a_label(tmp_path):
    root = write_nifti_folder(tmp_path / "data", count=2)
    (root / "labels" / "case_001.nii.gz").unlink()
    path = root / "images" / "case_001.nii.gz"
    message = one_line_problem(lambda: build_dataset("nifti", root, "all"), path)
    assert (
        message == f"{path}: image without label: expected label file {root / 'labels' / 'case_001.nii.gz'}"
    )


def test_dataset_json_naming_files_that_do_not_exist(tmp_path):
    root = write_msd(tmp_path / "task")
    (root / "labelsTr" / "vol_1.nii.gz").unlink()
    path = root / "labelsTr" / "vol_1.nii.gz"
    message = one_line_problem(lambda: build_dataset("msd", root, "all"), path)
    assert message == f"{path}: named by dataset.json: training[1] but not found"


def test_dataset_json_that_is_not_json(tmp_path):
    root = write_msd(tmp_path / "task")
    (root / "dataset.json").write_text('{"training": [\n')
    path = root / "dataset.json"
    assert "unreadable dataset.json" in one_line_problem(lambda: build_dataset("msd", root, "all"), path)


# -- the real data -------------------------------------------------------------------------------------------


def test_real_hippocampus_sorted_split_and_one_sample():
    if not (HIPPOCAMPUS / "images").is_dir():
        pytest.skip(f"the hippocampus volumes are not at {HIPPOCAMPUS} (see shared/README.md)")
    options = {"split_order": "sorted", "split_fractions": (0.1, 0.2)}
    splits = {s: build_dataset("nifti", HIPPOCAMPUS, s, **options) for s in ("train", "val", "test")}
    assert [len(splits[s]) for s in ("train", "val", "test")] == [182, 26, 52]
    every = sorted(p.name[: -len(".nii.gz")] for p in (HIPPOCAMPUS / "images").glob("*.nii.gz"))
    test = splits["test"]
    assert [test.volume_id(i) for i in range(len(test))] == every[-52:]
    assert test.class_names == ("background", "class 1", "class 2")
    pixels, mask = test[0]
    assert pixels.ndim == 4 and pixels.shape[0] == 1 and str(pixels.dtype) == "torch.float32"
    assert tuple(mask.shape) == tuple(pixels.shape[1:]) and str(mask.dtype) == "torch.int64"
    assert 31 <= mask.shape[0] <= 43 and 40 <= mask.shape[1] <= 59 and 24 <= mask.shape[2] <= 47
    assert set(np.unique(mask.numpy())) <= {0, 1, 2}


def test_a_negative_stored_value_can_be_the_ignore_value_of_signed_labels(tmp_path: Path) -> None:
    root = tmp_path / "signed"
    for i in range(2):
        save(root / "images" / f"c{i}.nii.gz", image(i))
        signed = label(i).astype(np.int16)
        signed[-1] = -1  # the last slab unlabelled
        save(root / "labels" / f"c{i}.nii.gz", signed)
    (root / "classes.yaml").write_text(json.dumps({"names": ["bg", "a", "b"], "ignore": -1}))
    data = build_dataset("nifti", root, "all")
    _, labels = data.load_volume(0)
    assert (labels[-1] == IGNORE_INDEX).all() and set(np.unique(labels[:-1]).tolist()) == {0, 1, 2}
    (root / "classes.yaml").write_text(json.dumps({"names": ["bg", "a", "b"]}))
    with pytest.raises(DataProblemError, match="-1"):  # without the line: a stray value, refused
        build_dataset("nifti", root, "all").load_volume(0)


def test_a_dataset_json_saved_with_a_byte_order_mark_reads_as_without(tmp_path: Path) -> None:
    root = write_msd(tmp_path / "task")
    before = build_dataset("msd", root, "all").samples
    spec = root / "dataset.json"
    spec.write_text("\ufeff" + spec.read_text(encoding="utf-8"), encoding="utf-8")
    assert build_dataset("msd", root, "all").samples == before
