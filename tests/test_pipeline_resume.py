"""``autodeeplab run --resume``: an interrupted pipeline is finished with its own settings (issue 18)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from tiny import SUPERNET, SYNTHETIC_SEARCH_DATA

from autodeeplab.cli.main import main

SEARCH = [*SUPERNET, *SYNTHETIC_SEARCH_DATA, "batch_size=2", "epochs=2", "arch_start_epoch=1", "device=cpu"]
TRAIN = [
    "model.filter_multiplier=2",
    "model.aspp_channels=8",
    "model.decoder_channels=8",
    "data.crop_size=32",
    "data.synthetic_size=[32,32]",
    "iterations=2",
    "batch_size=2",
    "device=cpu",
]


def sets(flag: str, items: list[str]) -> list[str]:
    return [part for item in items for part in (flag, item)]


def test_a_pipeline_stopped_after_its_search_is_finished_by_run_resume(tmp_path: Path, capsys) -> None:
    out = tmp_path / "p"
    assert (
        main(["run", "-q", "-o", str(out), *sets("--search-set", SEARCH), *sets("--train-set", TRAIN)]) == 0
    )
    full = json.loads((out / "eval.json").read_text())
    genotype = (out / "search" / "genotype.json").read_bytes()
    # as if it had been stopped after the search: no training, no evaluation yet
    shutil.rmtree(out / "train")
    (out / "eval.json").unlink()
    capsys.readouterr()
    assert main(["run", "--resume", str(out), "-q"]) == 0
    assert (out / "search" / "genotype.json").read_bytes() == genotype
    assert (out / "train" / "model.pt").is_file()
    again = json.loads((out / "eval.json").read_text())
    assert again["miou"] == pytest.approx(full["miou"])  # same seeds, same result

    assert main(["run", "--resume", str(out), "--dataset", "camvid"]) == 2
    assert "drop --dataset" in capsys.readouterr().err
    assert main(["run", "--resume", str(out / "search")]) == 2
    assert "not a pipeline run of 'autodeeplab run' (no search_settings.yaml)" in capsys.readouterr().err


def test_run_resume_of_a_finished_pipeline_reports_it_without_evaluating_again(
    tmp_path: Path, capsys, monkeypatch
) -> None:
    out = tmp_path / "p"
    assert (
        main(["run", "-q", "-o", str(out), *sets("--search-set", SEARCH), *sets("--train-set", TRAIN)]) == 0
    )
    written = (out / "eval.json").read_bytes()
    recorded = json.loads(written)
    assert recorded["predictions"] == [
        f"sample{i:03d}_panel.png" for i in range(len(recorded["predictions"]))
    ]
    capsys.readouterr()

    import autodeeplab.pipeline as pipeline

    def no_evaluation(*args, **kwargs):
        raise AssertionError("a finished pipeline was evaluated again")

    with monkeypatch.context() as patch:
        patch.setattr(pipeline, "evaluate", no_evaluation)
        assert main(["run", "--resume", str(out), "-q"]) == 0
    said = capsys.readouterr().out
    assert "3/4 and 4/4 done already" in said
    assert f"test mIoU {100 * recorded['miou']:.2f}%" in said
    assert (out / "eval.json").read_bytes() == written

    # another model under the same path (retrained): evaluated again
    from autodeeplab.checkpoint_io import load_checkpoint, save_checkpoint

    record = load_checkpoint(out / "train" / "model.pt")
    first = next(iter(record["weights"]))
    record["weights"][first] = record["weights"][first] + 1
    save_checkpoint(out / "train" / "model.pt", record)
    assert main(["run", "--resume", str(out), "-q"]) == 0
    assert "3/4 and 4/4 done already" not in capsys.readouterr().out
    assert json.loads((out / "eval.json").read_text())["checkpoint_sha256"] != recorded["checkpoint_sha256"]

    # a panel gone (as if stopped while writing them): evaluated and drawn again
    (out / "predictions" / recorded["predictions"][-1]).unlink()
    assert main(["run", "--resume", str(out), "-q"]) == 0
    assert "3/4 and 4/4 done already" not in capsys.readouterr().out
    assert (out / "predictions" / recorded["predictions"][-1]).is_file()
