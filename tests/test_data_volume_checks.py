"""``data check`` and ``data stats`` of volume datasets: every problem at once, each volume read once, the
statistics checked by hand (the tiny volumes and helpers of test_data_volumes.py)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

nib = pytest.importorskip("nibabel")

from test_data_volumes import AFFINE, SHAPE, image, label, save, truncate, write_msd, write_nifti_folder  # noqa: E402,F401

from autodeeplab.cli.main import main  # noqa: E402
from autodeeplab.data import nifti  # noqa: E402
from autodeeplab.data import volumes as volumes_module  # noqa: E402
from autodeeplab.data.checks import check_dataset, check_dataset_report  # noqa: E402
from autodeeplab.data.problems import DataProblemError  # noqa: E402
from autodeeplab.data.registry import build_dataset  # noqa: E402
from autodeeplab.data.stats import dataset_stats  # noqa: E402

# -- data check and data stats ------------------------------------------------------------------------------


def write_broken_folder(root: Path) -> tuple[Path, list[str]]:
    """A folder with one problem of each kind, and the lines ``data check`` must print (sorted)."""
    write_nifti_folder(root, count=7)
    (root / "classes.yaml").write_text("names: [background, anterior, posterior]\n")
    images, labels = root / "images", root / "labels"
    (labels / "case_000.nii.gz").unlink()  # orphan
    truncate(images / "case_001.nii.gz")
    save(labels / "case_002.nii.gz", label(2, shape=(6, 7, 4)))
    moved = AFFINE.copy()
    moved[1, 1] = 2.1
    save(labels / "case_003.nii.gz", label(3), moved)
    save(labels / "case_004.nii.gz", np.full(SHAPE, 3, np.uint8))
    save(images / "case_005.nii.gz", np.stack([image(5)] * 2, axis=-1))
    expected = [
        f"{images / 'case_000.nii.gz'}: image without label: expected label file {labels}/case_000.nii.gz",
        f"{images / 'case_001.nii.gz'}: unreadable NIfTI volume: truncated file",
        f"{labels / 'case_002.nii.gz'}: label is 6×7×4 voxels but its image case_002.nii.gz is 6×7×5",
        f"{labels / 'case_003.nii.gz'}: affine differs from its image case_003.nii.gz's by up to 0.1",
        f"{labels / 'case_004.nii.gz'}: label values 3 are outside the class set (expected 0..2, or 255",
        f"{images / 'case_005.nii.gz'}: 4D image (6×7×5×2) where a 3D volume is expected",
    ]
    return root, sorted(expected)


def test_check_lists_every_problem_at_once_reading_each_volume_once(tmp_path, monkeypatch):
    root, expected = write_broken_folder(tmp_path / "data")
    reads: list[str] = []
    for module, name in ((volumes_module, "read_image_volume"), (nifti, "read_label_volume")):
        original = getattr(module, name)
        monkeypatch.setattr(
            module, name, lambda path, *a, _f=original, **k: reads.append(str(path)) or _f(path, *a, **k)
        )
    report = check_dataset_report("nifti", root)
    found = sorted(str(p) for p in report.problems)
    assert len(found) == len(expected)
    for line, start in zip(found, expected, strict=True):
        assert line.startswith(start), (line, start)
    assert report.distinct_samples == 6 and report.samples["all"] == 6
    assert sum(report.samples[s] for s in ("train", "val", "test")) == 6
    assert sorted(reads) == sorted(set(reads)) and len(reads) == 12  # 6 images and 6 labels, once each
    # without a classes file the labels are read to name the classes: still once each, a broken one too
    clean = write_nifti_folder(tmp_path / "clean", count=4)
    broken = truncate(clean / "labels" / "case_002.nii.gz")
    reads.clear()
    (problem,) = check_dataset("nifti", clean)
    assert str(problem).startswith(f"{broken}: unreadable NIfTI volume: truncated file")
    assert sorted(reads) == sorted(set(reads)) and len(reads) == 8
    # the same words as training meets, one volume at a time
    data = build_dataset("nifti", root, "all", strict=False)
    for index in range(len(data) - 1):  # the last one, case_006, is fine
        with pytest.raises(DataProblemError) as info:
            data[index]
        assert str(info.value) in found


def test_check_of_a_clean_msd_task_and_the_hidden_foreground_of_0_255_labels(tmp_path):
    assert check_dataset("msd", write_msd(tmp_path / "task", count=3)) == []
    root = tmp_path / "binary"
    for i in range(2):
        save(root / "images" / f"c{i}.nii.gz", image(i))
        save(root / "labels" / f"c{i}.nii.gz", (label(0) > 0).astype(np.uint8) * 255)
    (root / "classes.yaml").write_text("names: [background, lesion]\n")
    (found,) = check_dataset("nifti", root, ["all"])
    assert found.path == str(root / "classes.yaml")
    assert "class 'lesion' has no voxels while the ignore value 255 covers" in found.message
    assert "write 'values: {0: background, 255: lesion}'" in found.message


def test_cli_check_of_a_broken_folder_prints_every_problem_and_exits_2(tmp_path, capsys):
    root, expected = write_broken_folder(tmp_path / "data")
    code = main(["data", "check", "--dataset", "nifti", "--data-root", str(root)])
    out, err = capsys.readouterr()
    assert code == 2 and "Traceback" not in out + err
    assert len(out.splitlines()) == len(expected)
    assert err.splitlines()[-1].startswith(f"nifti at {root}: 6 problems in 6 volumes (all 6, train ")
    missing = tmp_path / "nowhere"
    assert main(["data", "check", "--dataset", "nifti", "--data-root", str(missing)]) == 2
    out, err = capsys.readouterr()
    assert out.startswith(f"{missing}: data root not found") and "Traceback" not in out + err


def test_stats_of_volumes_by_hand(tmp_path, capsys):
    root = tmp_path / "data"
    masks = {
        "a": np.zeros((2, 3, 4), np.uint8),  # 24 voxels: background 20, class 1 3, ignored 1
        "b": np.full((3, 3, 3), 2, np.uint8),  # 27 voxels of class 2
    }
    masks["a"][0, 0, :3] = 1
    masks["a"][1, 2, 3] = 9
    spacing = {"a": np.diag([1.0, 2.0, 3.0, 1.0]), "b": np.diag([0.5, 2.0, 4.0, 1.0])}
    for stem, mask in masks.items():
        save(root / "images" / f"{stem}.nii.gz", image(1, mask.shape), spacing[stem])
        save(root / "labels" / f"{stem}.nii.gz", mask, spacing[stem])
    (root / "classes.yaml").write_text("names: [background, small, large, unseen]\nignore: 9\n")
    out = tmp_path / "stats"
    argv = ["data", "stats", "--dataset", "nifti", "--data-root", str(root), "--split", "all", "-o", str(out)]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert (
        "all: 2 volumes; shapes (DxHxW) min 2x3x3, max 3x3x4; spacing (mm) min 0.5x2x3, max 1x2x4" in printed
    )
    assert "voxels %  volumes" in printed and "pixel" not in printed
    assert "stored label values (share of all voxels): 0 39.22%, 1 5.88%, 2 52.94%, 9 1.96%" in printed
    assert "classes never seen: unseen" in printed
    data = json.loads((out / "stats.json").read_text())
    split = data["splits"]["all"]
    assert (split["voxels"], split["volumes_per_class"], split["ignored_voxels"]) == (
        [20, 3, 27, 0],
        [1, 1, 1, 0],
        1,
    )
    assert split["label_values"] == {"0": 20, "1": 3, "2": 27, "9": 1}
    assert split["class_fractions"]["large"] == pytest.approx(27 / 50)
    assert split["ignored_fraction"] == pytest.approx(1 / 51)
    assert (data["spatial_dims"], data["never_seen"]) == (3, ["unseen"])
    assert (out / "class_voxels.png").read_bytes()[:4] == b"\x89PNG" and not (
        out / "class_pixels.png"
    ).exists()
    stats = dataset_stats("nifti", root, ["all"])
    assert stats.splits["all"].unreadable == 0


def test_stats_of_a_folder_whose_classes_cannot_be_named_is_one_line(tmp_path, capsys):
    root = tmp_path / "data"
    save(root / "images" / "c.nii.gz", image(0))
    save(root / "labels" / "c.nii.gz", np.where(label(0) > 0, 2, 0).astype(np.uint8))
    code = main(["data", "stats", "--dataset", "nifti", "--data-root", str(root), "-o", str(tmp_path / "s")])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "not 0..K-1" in err and "Traceback" not in err
