"""The files a run would meet late are read once before its first step, with a bar when that is slow
(large volume sets take minutes): how many are read, and the bar's line."""

from __future__ import annotations

from functools import partial
from pathlib import Path

import pytest
from tiny import SUPERNET, SYNTHETIC_SEARCH_DATA

from autodeeplab.config.settings import load_config
from autodeeplab.data.checks import files_to_read, refuse_broken_files
from autodeeplab.data.registry import build_dataset
from autodeeplab.search import data as search_data
from autodeeplab.search.config import SearchConfig
from autodeeplab.train import loop as train_loop
from autodeeplab.train.config import TrainConfig


def test_images_read_are_the_first_count_and_each_is_counted_once() -> None:
    val = build_dataset("synthetic", None, "val", num_samples=5, size=(16, 16))
    for count, expected in [(None, 5), (3, 3), (9, 5), (0, 0)]:
        calls: list[int] = []
        assert files_to_read(val, count) == (expected, "reading the val images")
        refuse_broken_files(val, count, partial(calls.append, 1))
        assert len(calls) == expected


def test_volumes_read_are_every_pair_whatever_the_count(tmp_path: Path) -> None:
    pytest.importorskip("nibabel")
    from test_data_volumes import write_nifti_folder

    root = write_nifti_folder(tmp_path / "v", count=4)
    volumes = build_dataset("nifti", root, "all")
    calls = []
    assert files_to_read(volumes, 1) == (4, "reading the all volumes")
    refuse_broken_files(volumes, 1, lambda: calls.append(1))
    assert len(calls) == 4


@pytest.mark.parametrize("quiet", [False, True])
def test_search_and_training_show_a_bar_while_reading_unless_quiet(capsys, monkeypatch, quiet) -> None:
    # no delay: every read shows its bar (in a log file, a line after the first file and one at the end)
    monkeypatch.setattr(search_data, "READ_BAR_DELAY_S", 0.0)
    monkeypatch.setattr(train_loop, "READ_BAR_DELAY_S", 0.0)
    search = load_config(SearchConfig, "cpu", overrides=[*SUPERNET, *SYNTHETIC_SEARCH_DATA, "batch_size=2"])
    search_data.build_search_data(search, quiet=quiet)
    train = load_config(
        TrainConfig, "synthetic", overrides=["data.synthetic_eval_samples=3", "data.eval_split=val"]
    )
    train_loop.build_train_data(train, quiet=quiet)
    err = capsys.readouterr().err
    if quiet:
        assert "reading" not in err
    else:
        assert "reading the val images 100% 2/2" in err  # the search's 2 validation images
        assert "reading the val images 100% 3/3" in err  # the training's 3 evaluation images
