"""A new user's own folder of images and masks, read right or refused in one line (issue 17): 0/255 masks,
``values:`` and any ``ignore``, class names YAML would retype, hidden entries, split lists that leak or leave
files out, lossy masks, two classes files."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from test_data_layouts import rgb, save, write_folder

from autodeeplab.cli.main import main
from autodeeplab.data.checks import check_dataset_report
from autodeeplab.data.folder import seeded_split
from autodeeplab.data.registry import build_dataset
from autodeeplab.data.splits import record_split
from autodeeplab.errors import ConfigError, DataError


def binary_folder(root: Path, classes: str, count: int = 6) -> Path:
    """Masks stored as 0 (background) and 255 (the object, a quarter of each mask)."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "classes.yaml").write_text(classes)
    mask = np.zeros((4, 4), np.uint8)
    mask[:2, :2] = 255
    for i in range(count):
        save(root / "images" / f"s{i}.png", rgb(i, 4, 4))
        save(root / "masks" / f"s{i}.png", mask)
    return root


def check(root: Path, capsys) -> tuple[int, str, str]:
    code = main(["data", "check", "--dataset", "folder", "--data-root", str(root)])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_binary_0_255_masks_are_refused_with_the_line_to_write_and_read_right_with_it(tmp_path, capsys):
    root = binary_folder(tmp_path, "names: [background, object]\n")
    code, out, _ = check(root, capsys)
    assert code == 2
    assert f"{root / 'classes.yaml'}: class 'object' has no pixels while the ignore value 255" in out
    assert "write 'values: {0: background, 255: object}' in this file" in out
    (root / "classes.yaml").write_text("names: [background, object]\nvalues: {0: background, 255: object}\n")
    code, out, _ = check(root, capsys)
    assert code == 0 and "no problems in 6 samples" in out
    mask = build_dataset("folder", root, "all").load_raw(0)[1]
    assert np.array_equal(mask[:2, :2], np.ones((2, 2))) and not mask[2:].any()  # 255 is class 1 now


def test_ignore_may_be_any_stored_value_zero_included(tmp_path):
    root = binary_folder(tmp_path, "values: {255: object, 7: other}\nignore: 0\n")
    data = build_dataset("folder", root, "all")
    assert data.class_names == ("other", "object")  # by stored value: 7, then 255
    mask = data.load_raw(0)[1]
    assert (mask[:2, :2] == 1).all() and (mask[2:] == 255).all()  # 0 is unlabelled now
    (root / "classes.yaml").write_text("names: [a, b]\nignore: 0\n")
    with pytest.raises(DataError, match=r"'ignore': 0 is also the stored value of class 'a'; say which"):
        build_dataset("folder", root, "all")
    (root / "classes.yaml").write_text("names: [a, b]\nignore: [100, 200]\n")
    assert (
        build_dataset("folder", root, "all", strict=False).label_map.expected == "0..1, or 100, 200 (ignore)"
    )


def test_class_names_yaml_would_retype_stay_the_strings_they_are(tmp_path):
    names = ["null", "yes", "no", "on", "off", "true", "1", "2.5", "~"]
    root = write_folder(tmp_path, count=1)
    (root / "classes.yaml").write_text(f"names: [{', '.join(names)}]\nignore: 9\n")
    assert build_dataset("folder", root, "all").class_names == tuple(names)
    (root / "classes.yaml").unlink()
    (root / "classes.json").write_text(json.dumps({"names": ["a", None]}))
    with pytest.raises(
        DataError, match=r"field 'names\[1\]': null is not a class name; write it as a string"
    ):
        build_dataset("folder", root, "all")


def test_two_classes_files_are_a_problem_not_a_choice(tmp_path):
    root = write_folder(tmp_path, count=1)
    (root / "classes.json").write_text(json.dumps({"names": ["x", "y", "z"], "ignore": 9}))
    with pytest.raises(DataError, match=r"two classes files, classes.yaml and classes.json: keep one"):
        build_dataset("folder", root, "all")


def test_hidden_entries_are_not_data_and_do_not_switch_the_layout(tmp_path):
    root = write_folder(tmp_path, count=4)
    (root / "splits").mkdir()
    (root / "splits" / "train.txt").write_text("img0\nimg1\nimg2\n")
    (root / "splits" / "val.txt").write_text("img3\n")
    (root / "splits" / ".backup.txt").write_text("img0\n")
    for folder in ("images", "masks"):
        save(root / folder / ".ipynb_checkpoints" / "img0-checkpoint.png", rgb(0, 3, 4))
    (root / "images" / ".DS_Store").write_bytes(b"\0\1")
    save(root / "images" / "._img0.png", rgb(1, 3, 4))
    data = build_dataset("folder", root, "train")
    assert data.available_splits(root) == ("train", "val")
    assert [p.stem for p, _ in data.samples] == ["img0", "img1", "img2"]


def test_split_lists_that_leak_are_a_problem_and_unlisted_files_a_warning(tmp_path, capsys):
    root = write_folder(tmp_path, count=8)
    (root / "splits").mkdir()
    (root / "splits" / "train.txt").write_text("img0\nimg1\nimg2\nimg3  # the hard one\n")
    (root / "splits" / "test.txt").write_text("# held out\nimg3\nimg4\n")
    code, out, err = check(root, capsys)
    assert code == 2
    assert "train.txt: 1 stems are also in test.txt ('img3'): a sample in two of train/val/test leaks" in out
    assert "warning: " in err and "3 samples are in no split list and not used (img5, img6, img7)" in err
    (root / "splits" / "train.txt").write_text("img0\nimg1.png\nimages/img2\n")
    (root / "splits" / "test.txt").write_text("img3\nimg4\nimg5\nimg6\nimg7\n")
    code, out, _ = check(root, capsys)
    assert "line 2: 'img1.png' has neither image nor label; list stems without the extension ('img1')" in out
    assert "line 3: 'images/img2' has neither image nor label; list stems, not paths ('img2')" in out


def test_lossy_masks_are_refused(tmp_path):
    root = write_folder(tmp_path, count=2)
    (root / "masks" / "img1.png").unlink()
    Image = pytest.importorskip("PIL.Image")
    Image.fromarray(np.zeros((3, 4), np.uint8)).save(root / "masks" / "img1.jpg")
    report = check_dataset_report("folder", root, ["all"])
    assert [str(p) for p in report.problems] == [
        f"{root / 'masks' / 'img1.jpg'}: lossy mask: JPEG/WebP compression changes class values; save masks "
        "as PNG"
    ]


def test_gif_images_are_read_and_gif_masks_refused(tmp_path):
    from PIL import Image

    from autodeeplab.cli.predict import IMAGE_SUFFIXES as PREDICT_SUFFIXES
    from autodeeplab.data.imageio import IMAGE_SUFFIXES

    assert PREDICT_SUFFIXES == IMAGE_SUFFIXES and ".gif" in IMAGE_SUFFIXES
    root = write_folder(tmp_path, count=2)
    picture = np.asarray(Image.open(root / "images" / "img0.png").convert("RGB"))
    (root / "images" / "img0.png").unlink()
    Image.fromarray(picture).convert("P", palette=Image.Palette.ADAPTIVE).save(root / "images" / "img0.gif")
    assert build_dataset("folder", root, "all").load_raw(0)[0].shape == picture.shape
    (root / "masks" / "img1.png").unlink()
    Image.fromarray(np.zeros((3, 4), np.uint8)).save(root / "masks" / "img1.gif")
    report = check_dataset_report("folder", root, ["all"])
    assert [str(p) for p in report.problems] == [
        f"{root / 'masks' / 'img1.gif'}: GIF mask: GIF writers may reorder the palette, so its indices need "
        "not be the class values; save masks as PNG"
    ]


def test_rgb_masks_get_the_hint_to_add_colours(tmp_path):
    root = write_folder(tmp_path, count=1)
    save(root / "masks" / "img0.png", rgb(5, 3, 4))
    with pytest.raises(DataError, match=r"PIL mode 'RGB'; expected single-channel class indices; for colour"):
        build_dataset("folder", root, "all").load_raw(0)


def test_a_plain_folder_gets_a_seeded_held_out_split_that_adding_files_does_not_move(tmp_path, capsys):
    root = write_folder(tmp_path / "small", count=3)
    parts = {name: build_dataset("folder", root, name) for name in ("train", "val", "test")}
    assert [len(d) for d in parts.values()] == [1, 1, 1]  # a tiny folder still has all three
    code, out, _ = check(root, capsys)
    assert code == 0 and "no problems in 3 samples (all 3, train 1, val 1, test 1)" in out  # counted once

    stems = {f"s{i:03d}" for i in range(400)}
    split = seeded_split(stems, (0.2, 0.1), seed=7)
    assert set().union(*map(set, split.values())) == stems
    assert sum(len(v) for v in split.values()) == len(stems)  # disjoint
    assert 60 <= len(split["val"]) <= 100 and 25 <= len(split["test"]) <= 60  # about 20% and 10%
    more = seeded_split(stems | {f"new{i}" for i in range(50)}, (0.2, 0.1), seed=7)
    assert all(set(split[name]) <= set(more[name]) for name in split)  # nobody moved
    assert seeded_split(stems, (0.2, 0.1), seed=8) != split
    with pytest.raises(ConfigError, match=r"split_fractions: must be \[val, test\] with each >= 0"):
        build_dataset("folder", root, "val", split_fractions=(0.6, 0.5))


def test_a_run_records_the_split_it_was_given_and_refuses_a_folder_that_changed(tmp_path):
    root = write_folder(tmp_path / "data", count=6)
    data = build_dataset("folder", root, "train")
    run = tmp_path / "run"
    run.mkdir()
    record_split(run, data)
    record = json.loads((run / "data_split.json").read_text())
    assert record["splits"] == data.split_record and record["dataset"] == "folder"
    record_split(run, build_dataset("folder", root, "train"))  # the same files: fine
    save(root / "images" / "img9.png", rgb(9, 3, 4))
    save(root / "masks" / "img9.png", np.zeros((3, 4), np.uint8))
    with pytest.raises(DataError, match=r"data_split.json: the data folder changed since this run started"):
        record_split(run, build_dataset("folder", root, "train"))
    listed = write_folder(tmp_path / "listed", count=2, nested=True)
    record_split(tmp_path / "nothing", build_dataset("folder", listed, "train"))  # given splits: no record
    assert not (tmp_path / "nothing").exists()


def test_data_stats_counts_pixels_and_images_per_class_by_hand(tmp_path, capsys):
    root = tmp_path / "data"
    (root / "splits").mkdir(parents=True)
    (root / "classes.yaml").write_text("names: [sky, road, car]\nignore: 9\n")
    masks = {
        "a": np.array([[0, 0, 1, 9]] * 2, np.uint8),  # sky 4, road 2, ignored 2
        "b": np.array([[1, 1, 1, 1], [1, 1, 9, 9]], np.uint8),  # road 6, ignored 2
        "c": np.array([[0, 0, 0, 0]] * 3, np.uint8),  # sky 12 (3x4)
    }
    for stem, mask in masks.items():
        save(root / "images" / f"{stem}.png", rgb(1, *mask.shape))
        save(root / "masks" / f"{stem}.png", mask)
    (root / "splits" / "train.txt").write_text("a\nb\n")
    (root / "splits" / "val.txt").write_text("c\n")
    out = tmp_path / "stats"
    assert main(["data", "stats", "--dataset", "folder", "--data-root", str(root), "-o", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "train: 2 samples; sizes (HxW) min 2x4, median 2x4, max 2x4; ignored 25.0%" in printed
    assert "classes never seen: car" in printed
    data = json.loads((out / "stats.json").read_text())
    train = data["splits"]["train"]
    assert (train["pixels"], train["images"], train["ignored_pixels"]) == ([4, 8, 0], [1, 2, 0], 4)
    assert train["class_fractions"] == {"sky": 1 / 3, "road": 2 / 3, "car": 0.0}
    assert data["splits"]["val"]["sizes"] == {"min": [3, 4], "median": [3, 4], "max": [3, 4]}
    assert data["never_seen"] == ["car"]
    assert (out / "class_pixels.png").read_bytes()[:4] == b"\x89PNG"
    # its own files are replaced; a foreign one is not
    assert main(["data", "stats", "--dataset", "folder", "--data-root", str(root), "-o", str(out)]) == 0
    (out / "stats.json").write_text("{}")
    capsys.readouterr()
    assert main(["data", "stats", "--dataset", "folder", "--data-root", str(root), "-o", str(out)]) == 2
    assert "was not written by autodeeplab" in capsys.readouterr().err


def test_a_search_or_training_on_0_255_masks_refuses_before_losing_the_foreground(tmp_path, capsys):
    root = binary_folder(tmp_path / "data", "names: [background, object]\n", count=8)
    common = ["--dataset", "folder", "--data-root", str(root), "--set", "data.crop_size=4"]
    run = tmp_path / "run"
    code = main(["train", "--genotype", "paper", "--preset", "tiny", *common, "-o", str(run)])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1, err
    assert "write 'values: {0: background, 255: object}'" in err and not run.exists()


def test_a_plain_folder_without_lists_runs_end_to_end_and_is_scored_on_held_out_images(tmp_path, capsys):
    root = tmp_path / "data"
    (root / "classes.yaml").parent.mkdir(parents=True)
    (root / "classes.yaml").write_text("values: {0: background, 255: object}\n")
    for i in range(20):
        mask = np.zeros((32, 32), np.uint8)
        mask[4 + i % 8 : 20 + i % 8, 6:22] = 255
        save(root / "images" / f"p{i:02d}.png", rgb(i, 32, 32))
        save(root / "masks" / f"p{i:02d}.png", mask)
    search = [
        *("space.filter_multiplier=2", "space.num_layers=3", "space.num_blocks=2"),
        *("space.stem_channels=[4,4,8]", "data.crop_size=16", "batch_size=2", "epochs=2"),
        *("arch_start_epoch=1", "device=cpu", "data.split_fractions=[0.2,0.2]"),
    ]
    train = [
        *("model.filter_multiplier=2", "model.aspp_channels=8", "model.decoder_channels=8"),
        *(
            "data.crop_size=16",
            "iterations=2",
            "batch_size=2",
            "device=cpu",
            "data.split_fractions=[0.2,0.2]",
        ),
    ]
    out = tmp_path / "run"
    argv = ["run", "-q", "--dataset", "folder", "--data-root", str(root), "-o", str(out)]
    argv += [p for s in search for p in ("--search-set", s)] + [p for s in train for p in ("--train-set", s)]
    assert main(argv) == 0, capsys.readouterr().err
    record = json.loads((out / "search" / "data_split.json").read_text())["splits"]
    assert record == json.loads((out / "train" / "data_split.json").read_text())["splits"]
    assert record == seeded_split({f"p{i:02d}" for i in range(20)}, (0.2, 0.2), 0)
    scored = json.loads((out / "eval.json").read_text())
    assert (scored["dataset"], scored["split"], scored["num_images"]) == (
        "folder",
        "test",
        len(record["test"]),
    )
    assert set(record["test"]).isdisjoint(record["train"] + record["val"]) and record["test"]


def test_data_stats_never_writes_into_the_dataset(tmp_path, capsys):
    root = write_folder(tmp_path / "data", count=3)
    before = sorted(p.name for p in root.rglob("*"))
    out = root / "images"
    assert main(["data", "stats", "--dataset", "folder", "--data-root", str(root), "-o", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "inside the data root" in err, err
    assert sorted(p.name for p in root.rglob("*")) == before


def test_files_the_split_folder_layout_would_not_read_are_problems_not_dropped(tmp_path, capsys):
    root = write_folder(tmp_path / "d", count=4, nested=True)
    assert build_dataset("folder", root, "train").problems == []
    save(root / "images" / "train" / "aachen" / "x.png", rgb(7, 3, 4))  # a city level: not read
    save(root / "masks" / "train" / "aachen" / "x.png", np.zeros((3, 4), np.uint8))
    save(root / "images" / "stray.png", rgb(8, 3, 4))  # beside the split folders
    (root / "images" / "empty").mkdir()  # an empty folder is one more (empty) split, nothing unread
    problems = {
        (Path(p.path).relative_to(root).as_posix(), p.message)
        for p in build_dataset("folder", root, "train", strict=False).problems
    }
    assert problems == {
        (
            "images",
            "1 image files beside the split folders belong to no split and are not read (stray.png): "
            "move them into a split folder",
        ),
        (
            "images/train/aachen",
            "1 image files in a sub-folder of a split folder are not read (samples are "
            "matched by name within the split folder): move them up",
        ),
        (
            "masks/train/aachen",
            "1 image files in a sub-folder of a split folder are not read (samples are "
            "matched by name within the split folder): move them up",
        ),
    }
    code, out, err = check(root, capsys)
    assert code == 2 and "stray.png" in out + err


def test_data_stats_of_a_folder_with_nothing_to_count_says_why_in_one_line(tmp_path, capsys):
    def stats(root: Path) -> str:
        assert main(["data", "stats", "--dataset", "folder", "--data-root", str(root), "-o", str(out)]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "Traceback" not in err, err
        assert not out.exists()
        return err

    out = tmp_path / "stats"
    root = write_folder(tmp_path / "d", count=2)
    (root / "classes.yaml").unlink()
    assert "classes.yaml: wrong folder layout: not found" in stats(root)
    assert "data root not found" in stats(tmp_path / "nowhere")
    for name in ("a", "b"):  # Cityscapes-like suffixes: images and masks never pair
        save(root / "images" / f"{name}_leftImg8bit.png", rgb(0, 3, 4))
        save(root / "masks" / f"{name}_gtFine_labelIds.png", np.zeros((3, 4), np.uint8))
    (root / "classes.yaml").write_text(json.dumps({"names": ["ground", "tree", "house"], "ignore": 9}))
    for folder in ("images", "masks"):
        for stray in (root / folder).glob("img*"):
            stray.unlink()
    assert "image without label: expected label file" in stats(root)


def test_a_split_list_and_classes_file_saved_with_a_byte_order_mark_read_as_without(tmp_path):
    root = write_folder(tmp_path / "d", count=4)
    (root / "splits").mkdir()
    (root / "splits" / "train.txt").write_text("\ufeffimg0\nimg1\n", encoding="utf-8")  # Windows editors
    (root / "splits" / "val.txt").write_text("img2\nimg3\n", encoding="utf-8")
    spec = (root / "classes.yaml").read_text()
    (root / "classes.yaml").write_text("\ufeff" + spec, encoding="utf-8")
    data = build_dataset("folder", root, "train")
    assert [p.stem for p, _ in data.samples] == ["img0", "img1"] and data.class_names[0] == "ground"
