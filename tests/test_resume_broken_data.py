"""A search or a training that stops on broken data leaves no half-made run: fix the data, run it again."""

from __future__ import annotations

from pathlib import Path

import pytest
from test_data_layouts import write_camvid
from tiny import SMALL_HEADS, SUPERNET

from autodeeplab.cli.main import main

SIZE = 32


SEARCH = [
    *SUPERNET,
    "data.crop_size=32",
    "batch_size=2",
    "epochs=1",
    "arch_start_epoch=0",  # trainA and trainB are both read in the one epoch
    "device=cpu",
]
TRAIN = [
    "data.crop_size=32",
    "data.eval_split=null",
    *SMALL_HEADS,
    "iterations=2",  # one pass over the 4 training images
    "batch_size=2",
]


@pytest.mark.parametrize(
    ("command", "settings"),
    [(["search"], SEARCH), (["train", "--genotype", "paper", "--preset", "tiny"], TRAIN)],
    ids=["search", "train"],
)
def test_broken_data_stops_in_one_line_and_the_same_command_runs_once_fixed(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], command: list[str], settings: list[str]
) -> None:
    root = write_camvid(tmp_path / "camvid", {"train": 4, "val": 2, "test": 1}, h=SIZE, w=SIZE)
    image = root / "train" / "train_002.png"
    good = image.read_bytes()
    image.write_bytes(good[:-40])  # a truncated PNG: found only when the loop reads it
    run = tmp_path / "run"
    argv = [*command, "-q", "-o", str(run), "--dataset", "camvid", "--data-root", str(root)]
    argv += [part for item in settings for part in ("--set", item)]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "Traceback" not in err, err
    assert err.startswith(f"autodeeplab {command[0]}: error: {image}: unreadable or truncated image file"), (
        err
    )
    assert not run.exists()  # not "exists and is not empty", not "nothing to resume"
    image.write_bytes(good)
    assert main(argv) == 0
    assert (run / "config.yaml").is_file() and list((run / "checkpoints").glob("*.pt"))
