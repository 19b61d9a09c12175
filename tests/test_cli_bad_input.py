"""Bad command-line values and broken data on disk, through the CLI: one line on stderr, exit 2, no traceback.

Also a search end to end on a tiny dataset written in the CamVid layout (real files, not the synthetic data).
Every dataset here is written by the test, a few 32×32 images, so each test runs in about a second.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from test_data_layouts import rgb, save, write_camvid, write_folder
from tiny import SMALL, SUPERNET

from autodeeplab.cli.main import main
from autodeeplab.config.settings import load_config
from autodeeplab.data.camvid import CLASS_NAMES, PALETTE
from autodeeplab.data.registry import build_dataset
from autodeeplab.nets.model_file import TrainedInfo, save_trained
from autodeeplab.space.autodeeplab.genotype import Genotype
from autodeeplab.train.config import TrainConfig
from autodeeplab.train.loop import build_model

SIDE = 32  # image height and width of the written datasets
COUNTS = {"train": 8, "val": 2, "test": 1}  # 8 train images: trainA and trainB of 4, batches of 2
TINY_SEARCH = [
    *SUPERNET,
    f"data.crop_size={SIDE}",
    "data.num_workers=0",
    "batch_size=2",
    "epochs=2",
    "arch_start_epoch=1",
    "device=cpu",
]
TINY_TRAIN = [
    f"data.crop_size={SIDE}",
    "data.num_workers=0",
    "model.filter_multiplier=2",
    "model.aspp_channels=8",
    "model.decoder_channels=8",
    "iterations=2",
    "batch_size=2",
    "device=cpu",
]
TOO_LARGE_CROP = 3000  # under the 4096 typo limit, far over CamVid's 480 px width at any preset's scale
SPLITS = "(choose from: train, val, test)"


def sets(flag: str, items: list[str]) -> list[str]:
    return [part for item in items for part in (flag, item)]


def one_line_error(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    """Run the CLI; assert exit 2 and one stderr line without traceback; return that line's message."""
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.endswith("\n") and err.count("\n") == 1 and "Traceback" not in err, err
    prefix = f"autodeeplab {argv[0]}: error: "
    assert err.startswith(prefix), err
    return err[len(prefix) : -1]


@pytest.fixture
def camvid(tmp_path: Path) -> Path:
    return write_camvid(tmp_path / "camvid", COUNTS, h=SIDE, w=SIDE)


@pytest.fixture
def checkpoint(tmp_path: Path, camvid: Path) -> Path:
    """A model.pt for CamVid, as training writes it (untrained weights: only the splits matter here)."""
    config = load_config(TrainConfig, preset="tiny", overrides=TINY_TRAIN)
    info = TrainedInfo("camvid", list(CLASS_NAMES), [list(c) for c in PALETTE], 255, data_root=str(camvid))
    path = tmp_path / "model.pt"
    save_trained(path, build_model(SMALL, config, len(CLASS_NAMES)), info)
    return path


def search_args(root: Path, out: Path, *extra: str) -> list[str]:
    base = ["search", "-q", "-o", str(out), "--dataset", "camvid", "--data-root", str(root)]
    return [*base, *sets("--set", TINY_SEARCH), *sets("--set", list(extra))]


def train_args(root: Path, out: Path, *extra: str) -> list[str]:
    base = ["train", "-q", "--genotype", "paper", "-o", str(out), "--dataset", "camvid"]
    return [*base, "--data-root", str(root), *sets("--set", TINY_TRAIN), *sets("--set", list(extra))]


def run_args(root: Path | None, out: Path, *extra: str) -> list[str]:
    data = ["--dataset", "camvid", "--data-root", str(root)] if root is not None else []
    return ["run", "-q", "-o", str(out), *data, *sets("--search-set", TINY_SEARCH), *extra]


def assert_nothing_written(out: Path) -> None:
    assert not out.exists() or not any(out.iterdir()), sorted(p.name for p in out.rglob("*"))


# -- a broken label in the split a run evaluates on ---------------------------------------------------
def test_a_broken_validation_label_stops_a_run_before_its_first_step(camvid, tmp_path, capsys, monkeypatch):
    """Met at the first evaluation, it cost the epoch (search) or the steps (train) before it."""
    label = build_dataset("camvid", camvid, "val").label_path(1)  # the second image the evaluation reads
    save(label, np.full((SIDE, SIDE), 40, np.uint8))
    # only the images the evaluation reads are read: with the first one alone, both runs go through
    assert main(search_args(camvid, tmp_path / "s1", "data.max_val_images=1")) == 0
    assert main(train_args(camvid, tmp_path / "t1", "data.eval_split=val", "data.eval_max_images=1")) == 0
    capsys.readouterr()

    def evaluation_reached(*args, **kwargs):
        raise AssertionError("the run reached its first evaluation: the images were not read before")

    monkeypatch.setattr("autodeeplab.search.loop.validation_score", evaluation_reached)
    monkeypatch.setattr("autodeeplab.train.loop.evaluate_during_training", evaluation_reached)
    expected = f"{label}: label values 40 are outside the class set (expected 0..10, or 11 (ignore))"
    for argv in (
        search_args(camvid, tmp_path / "s"),
        train_args(camvid, tmp_path / "t", "data.eval_split=val"),
    ):
        assert one_line_error(argv, capsys) == expected
    assert not (tmp_path / "s").exists() and not (tmp_path / "t").exists()


# -- a split that does not exist ----------------------------------------------------------------------
def test_search_with_a_split_that_does_not_exist(camvid, tmp_path, capsys):
    message = one_line_error(search_args(camvid, tmp_path / "run", "data.val_split=dev"), capsys)
    assert message == f"split: 'dev' is not a split of camvid {SPLITS}"


def test_train_with_a_split_that_does_not_exist(camvid, tmp_path, capsys):
    message = one_line_error(train_args(camvid, tmp_path / "run", "data.eval_split=dev"), capsys)
    assert message == f"split: 'dev' is not a split of camvid {SPLITS}"


def test_eval_with_a_split_that_does_not_exist(checkpoint, capsys):
    message = one_line_error(["eval", str(checkpoint), "--split", "dev", "-q"], capsys)
    assert message == f"split: 'dev' is not a split of camvid {SPLITS}"


@pytest.mark.parametrize(
    ("flag", "value", "field"),
    [
        ("--eval-split", "dev", "eval_split"),
        ("--search-set", "data.val_split=dev", "search data.val_split"),
        ("--train-set", "data.eval_split=dev", "train data.eval_split"),
        ("--train-set", "data.train_split=dev", "train data.train_split"),
    ],
)
def test_run_refuses_a_split_that_does_not_exist_before_anything_runs(
    camvid, tmp_path, capsys, flag, value, field
):
    out = tmp_path / "pipe"
    message = one_line_error(run_args(camvid, out, flag, value), capsys)
    assert message == f"{field}: 'dev' is not a split of camvid {SPLITS}"
    assert not out.exists()  # refused before the search: nothing to clean up, the command can be rerun


def test_run_refuses_bad_data_layout_of_the_eval_split_before_anything_runs(camvid, tmp_path, capsys):
    for path in (camvid / "test").iterdir():
        path.unlink()
    (camvid / "test").rmdir()
    out = tmp_path / "pipe"
    message = one_line_error(run_args(camvid, out), capsys)
    assert message.startswith(
        f"{camvid / 'test'}: wrong folder layout: not found; expected CamVid SegNet layout"
    )
    assert not out.exists()


# -- a crop larger than allowed ---------------------------------------------------------------------------
CROP = f"{TOO_LARGE_CROP}x{TOO_LARGE_CROP}"
CROP_MESSAGE = f"crop_size: {CROP} is larger than allowed: the images are at most 360x480 (HxW)"


def test_search_with_a_crop_larger_than_the_images(camvid, tmp_path, capsys):
    message = one_line_error(
        search_args(camvid, tmp_path / "run", f"data.crop_size={TOO_LARGE_CROP}"), capsys
    )
    assert message == f"{CROP_MESSAGE}, 360x480 at the largest scale 1"


def test_search_crop_check_on_a_folder_whose_image_sizes_vary(tmp_path, capsys):
    root = write_folder(tmp_path / "folder", count=8)  # 3x4 images ...
    stem = build_dataset("folder", root, "train").samples[0][0].stem
    save(root / "images" / f"{stem}.png", rgb(1, 5, 9))  # ... and one 5x9, the largest of the split
    save(root / "masks" / f"{stem}.png", np.zeros((5, 9), np.uint8))
    argv = ["search", "-q", "-o", str(tmp_path / "run"), "--dataset", "folder", "--data-root", str(root)]
    message = one_line_error([*argv, *sets("--set", [*TINY_SEARCH, "data.crop_size=10"])], capsys)
    largest = "the images are at most 5x9 (HxW), 5x9 at the largest scale 1"
    assert message == f"crop_size: 10x10 is larger than allowed: {largest}"


def test_train_with_a_crop_larger_than_the_images(camvid, tmp_path, capsys, monkeypatch):
    def not_refused(*args, **kwargs):  # a 3000x3000 training step would take minutes: fail at once instead
        raise RuntimeError("the crop size was not refused before training started")

    monkeypatch.setattr("autodeeplab.train.loop.training_batches", not_refused, raising=False)
    message = one_line_error(train_args(camvid, tmp_path / "run", f"data.crop_size={TOO_LARGE_CROP}"), capsys)
    assert message.startswith(CROP_MESSAGE)


def test_run_refuses_a_crop_larger_than_the_images_before_anything_runs(camvid, tmp_path, capsys):
    out = tmp_path / "pipe"
    message = one_line_error(run_args(camvid, out, "--train-set", f"data.crop_size={TOO_LARGE_CROP}"), capsys)
    assert message == f"train settings: {CROP_MESSAGE}, 450x600 at the largest scale 1.25"  # the tiny preset
    assert not out.exists()


# -- a negative batch size, an unknown dataset --------------------------------------------------------------
def test_search_with_a_negative_batch_size(camvid, tmp_path, capsys):
    out = tmp_path / "run"
    assert (
        one_line_error(search_args(camvid, out, "batch_size=-1"), capsys)
        == "batch_size: must be at least 1, got -1"
    )
    assert_nothing_written(out)


@pytest.mark.parametrize(
    ("flag", "message"),
    [
        ("--search-set", "search settings: batch_size: must be at least 1, got -1"),
        ("--train-set", "train settings: batch_size: must be at least 1, got -1"),
    ],
)
def test_run_with_a_negative_batch_size(tmp_path, capsys, flag, message):
    out = tmp_path / "pipe"
    assert one_line_error(run_args(None, out, flag, "batch_size=-1"), capsys) == message
    assert not out.exists()


def test_hints_name_the_flags_of_the_command_at_hand(tmp_path, capsys):
    """run has no --set: its hints say --search-set; an unknown flag points at the command's own help."""
    out = tmp_path / "pipe"
    message = one_line_error(["run", "-q", "-o", str(out), "--search-set", "epochs=2"], capsys)
    assert message.startswith("search settings: arch_start_epoch: must be less than epochs (2)")
    assert message.endswith("(e.g. --search-set arch_start_epoch=1)")
    for phase, key in (
        ("search", "space.spatial_dims"),
        ("train", "model.spatial_dims"),
    ):  # met with the data
        message = one_line_error(["run", "-q", "-o", str(out), f"--{phase}-set", f"{key}=3"], capsys)
        hint = f"use --{phase}-set {key}=2"
        assert message == f"{phase} settings: {key}: 3 (volumes) but synthetic train holds images; {hint}"
    with pytest.raises(SystemExit) as exit_info:
        main(["search", "--epochs", "3"])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err == (
        "autodeeplab search: error: unrecognized arguments: --epochs 3 (see 'autodeeplab search --help')\n"
    )
    with pytest.raises(SystemExit):  # before the command word: the top level's flag
        main(["--bogus", "search"])
    assert capsys.readouterr().err.startswith(
        "autodeeplab: error: unrecognized arguments: --bogus (see 'autodeeplab"
    )
    message = one_line_error(["search", "-o", str(out), "--set", "flip"], capsys)
    assert message == "override 'flip': expected KEY=VALUE, e.g. lr=0.01 or data.flip=false"
    assert not out.exists()


UNKNOWN = (
    "dataset: 'nope' is not a known dataset "
    "(choose from: synthetic, camvid, cityscapes, voc, ade20k, folder, nifti, msd)"
)


@pytest.mark.parametrize("command", ["search", "train", "run"])
def test_an_unknown_dataset_name(tmp_path, capsys, command):
    out = tmp_path / "out"
    argv = {
        "search": ["search", "-q", "-o", str(out), *sets("--set", TINY_SEARCH)],
        "train": ["train", "-q", "--genotype", "paper", "-o", str(out), *sets("--set", TINY_TRAIN)],
        "run": run_args(None, out),
    }[command]
    assert one_line_error([*argv, "--dataset", "nope"], capsys) == UNKNOWN
    if command == "run":
        assert not out.exists()


def test_eval_and_data_check_with_an_unknown_dataset_name(checkpoint, capsys):
    assert one_line_error(["eval", str(checkpoint), "--dataset", "nope", "-q"], capsys) == UNKNOWN
    with pytest.raises(SystemExit) as exit_info:  # argparse's choices: refused while parsing
        main(["data", "check", "--dataset", "nope"])
    err = capsys.readouterr().err
    assert (
        exit_info.value.code == 2
        and err.count("\n") == 1
        and "invalid choice: 'nope'" in err
        and "Traceback" not in err
    )


# -- broken data met lazily ------------------------------------------------------------------------------
def test_search_stops_at_a_truncated_training_image_naming_it(camvid, tmp_path, capsys):
    broken = camvid / "train" / "train_003.png"
    broken.write_bytes(broken.read_bytes()[:-30])  # the header is intact: listing finds nothing wrong
    message = one_line_error(search_args(camvid, tmp_path / "run"), capsys)
    assert message.startswith(f"{broken}: unreadable or truncated image file ("), message


# -- a search on real files ----------------------------------------------------------------------------------
def test_search_end_to_end_on_a_camvid_layout_dataset(camvid, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(search_args(camvid, run)) == 0
    assert "found architecture" in capsys.readouterr().out
    split = json.loads((run / "split.json").read_text())
    train_a, train_b = split["train_a"], split["train_b"]
    assert len(train_a) == len(train_b) == COUNTS["train"] // 2
    assert sorted(train_a + train_b) == list(range(COUNTS["train"]))  # disjoint halves of the train split
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [m["epoch"] for m in metrics] == [1, 2] and all(0 <= m["val_miou"] <= 1 for m in metrics)
    genotype = Genotype.load(run / "genotype.json")
    assert len(genotype.network_path) == 3 and len(genotype.cell) == 2
    with Image.open(camvid / "train" / "train_000.png") as image:  # the files were read as they are
        assert image.size == (SIDE, SIDE)
