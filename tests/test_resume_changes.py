"""`--resume` with changed settings, through the CLI: refused in one line unless the key is safe to change."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image
from tiny import SMALL_HEADS, SUPERNET, SYNTHETIC_SEARCH_DATA

from autodeeplab.checkpoint_io import load_checkpoint
from autodeeplab.cli.main import main
from autodeeplab.config.settings import load_config
from autodeeplab.nets.model_file import load_model
from autodeeplab.search.config import SearchConfig
from autodeeplab.search.loop import run_search

TRAIN = [
    "data.crop_size=32",
    "data.synthetic_size=[32,32]",
    "data.synthetic_train_samples=4",
    "data.synthetic_eval_samples=2",
    "data.eval_split=null",
    *SMALL_HEADS,
    "iterations=2",
    "batch_size=2",
]
SEARCH = [
    *SUPERNET,
    *SYNTHETIC_SEARCH_DATA,
    "batch_size=2",
    "arch_start_epoch=0",
    "steps_per_epoch=1",
    "device=cpu",
]


def sets(items: list[str]) -> list[str]:
    return [part for item in items for part in ("--set", item)]


def one_line_error(capsys: pytest.CaptureFixture[str], command: str) -> str:
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "Traceback" not in err, err
    prefix = f"autodeeplab {command}: error: "
    assert err.startswith(prefix), err
    return err[len(prefix) :]


def snapshot(run: Path) -> dict[str, bytes]:
    return {str(p.relative_to(run)): p.read_bytes() for p in sorted(run.rglob("*")) if p.is_file()}


def train(run: Path, *extra: str) -> int:
    return main(
        ["train", "--genotype", "paper", "--preset", "tiny", "-o", str(run), "-q", *sets(TRAIN), *extra]
    )


@pytest.fixture
def trained(tmp_path: Path) -> Path:
    run = tmp_path / "run"
    assert train(run) == 0
    return run


ALLOWED_TRAIN = (
    "data.num_workers, data.root, device, iterations, checkpoint_every, keep_checkpoints, log_every, "
    "accumulate_steps, sync_bn"
)


@pytest.mark.parametrize(
    ("flags", "key", "old", "new"),
    [
        (["--dataset", "camvid"], "data.dataset", "'synthetic'", "'camvid'"),
        (["--set", "model.filter_multiplier=8"], "model.filter_multiplier", "4", "8"),
        (["--set", "batch_size=4"], "batch_size", "2", "4"),
        (["--set", "seed=1"], "seed", "0", "1"),
    ],
)
def test_a_resume_that_changes_the_model_or_the_data_is_refused(
    trained: Path, capsys: pytest.CaptureFixture[str], flags: list[str], key: str, old: str, new: str
) -> None:
    before = snapshot(trained)
    capsys.readouterr()
    assert main(["train", "--resume", str(trained), "-q", *flags]) == 2
    allowed = ", ".join(sorted(ALLOWED_TRAIN.split(", ")))
    assert one_line_error(capsys, "train") == (
        f"--resume {trained}: {key} cannot change on resume (the run has {old}, now {new}); "
        f"only {allowed} may change"
    )
    assert snapshot(trained) == before  # nothing touched


def test_extending_a_training_is_accepted_and_recorded(trained: Path) -> None:
    assert main(["train", "--resume", str(trained), "-q", "--set", "iterations=4"]) == 0
    _, info = load_model(trained / "model.pt")
    assert info.step == 4 and info.iterations == 4
    written = yaml.safe_load((trained / "config.yaml").read_text())
    assert written["iterations"] == 4 and written["batch_size"] == 2
    newest = sorted((trained / "checkpoints").glob("*.pt"))[-1]
    assert written["run_info"]["resumed_with"] == [
        {"checkpoint": "000001-step00000002.pt", "changed": {"iterations": [2, 4]}}
    ]
    assert load_checkpoint(newest)["config"]["iterations"] == 4
    # a plain resume of the finished run changes nothing more
    assert main(["train", "--resume", str(trained), "-q"]) == 0
    assert len(yaml.safe_load((trained / "config.yaml").read_text())["run_info"]["resumed_with"]) == 1


def test_shortening_below_the_steps_done_is_refused(
    trained: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    capsys.readouterr()
    assert main(["train", "--resume", str(trained), "-q", "--set", "iterations=1"]) == 2
    assert (
        one_line_error(capsys, "train") == f"--resume {trained}: iterations 1 is less than the 2 steps done"
    )


def write_folder(root: Path, names: list[str]) -> Path:
    """A plain-folder dataset (images/<split>/, masks/<split>/) of 32x32 images using every class."""
    root.mkdir(parents=True)
    (root / "classes.yaml").write_text(json.dumps({"names": names, "ignore": 255}))
    rng = np.random.default_rng(0)
    for split, count in (("train", 4), ("val", 2)):
        for i in range(count):
            for folder, array in (
                ("images", rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)),
                ("masks", (np.arange(32 * 32).reshape(32, 32) % len(names)).astype(np.uint8)),
            ):
                (root / folder / split).mkdir(parents=True, exist_ok=True)
                Image.fromarray(array).save(root / folder / split / f"s{i}.png")
    return root


def test_data_moved_to_a_folder_with_other_classes_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    three = write_folder(tmp_path / "three", ["road", "car", "tree"])
    four = write_folder(tmp_path / "four", ["road", "car", "tree", "sky"])
    run = tmp_path / "run"
    assert train(run, "--dataset", "folder", "--data-root", str(three)) == 0
    capsys.readouterr()
    before = {p: p.read_bytes() for p in sorted(run.rglob("*")) if p.is_file()}
    assert main(["train", "--resume", str(run), "-q", "--data-root", str(four), "--set", "iterations=4"]) == 2
    newest = sorted((run / "checkpoints").glob("*.pt"))[-1]
    assert one_line_error(capsys, "train") == (
        f"{newest}: the checkpoint predicts 3 classes (folder) but folder train has 4"
    )
    # refused after its allowed changes (data.root, iterations) were checked: config.yaml not rewritten
    assert {p: p.read_bytes() for p in sorted(run.rglob("*")) if p.is_file()} == before
    # the same data at a new place is fine (data may move)
    three.rename(tmp_path / "moved")
    assert main(["train", "--resume", str(run), "-q", "--data-root", str(tmp_path / "moved")]) == 0


def arch(run: Path) -> tuple[np.ndarray, np.ndarray]:
    data = json.loads((run / "arch_params.json").read_text())
    return np.array(data["alpha"]), np.array(data["beta"])


def test_extending_a_search_equals_the_longer_search(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    short, long = tmp_path / "short", tmp_path / "long"
    for run, epochs in ((short, 1), (long, 2)):  # in process, without the CLI's pictures: faster
        config = load_config(SearchConfig, preset="cpu", overrides=[*SEARCH, f"epochs={epochs}"])
        run_search(config, run, quiet=True, echo=lambda line: None)
    split = (short / "split.json").read_text()
    (short / "split.json").unlink()  # lost: restored from the checkpoint, which holds the split
    assert main(["search", "-q", "--resume", str(short), "--set", "epochs=2"]) == 0
    assert "split.json was missing: restored it from" in capsys.readouterr().out
    assert json.loads((short / "split.json").read_text()) == json.loads(split)
    # the cosine schedule continues as if planned for 2 epochs: the same search as the 2-epoch one
    (sa, sb), (la, lb) = arch(short), arch(long)
    assert np.abs(sa - la).max() <= 1e-6 and np.abs(sb - lb).max() <= 1e-6
    assert json.loads((short / "genotype.json").read_text()) == json.loads(
        (long / "genotype.json").read_text()
    )
    written = yaml.safe_load((short / "config.yaml").read_text())
    assert written["epochs"] == 2 and written["run_info"]["resumed_with"][0]["changed"] == {"epochs": [1, 2]}
    # the search space cannot change, and an edited split.json is refused
    assert main(["search", "-q", "--resume", str(short), "--set", "space.num_layers=4"]) == 2
    assert "space.num_layers cannot change on resume (the run has 3, now 4)" in one_line_error(
        capsys, "search"
    )
    edited = json.loads(split)
    edited["train_a"], edited["train_b"] = edited["train_b"], edited["train_a"]
    (short / "split.json").write_text(json.dumps(edited))
    assert main(["search", "-q", "--resume", str(short), "--set", "epochs=3"]) == 2
    assert one_line_error(capsys, "search").startswith(
        f"{short / 'split.json'}: differs from the trainA/trainB split saved in "
    )


@pytest.mark.parametrize(
    ("kind", "command", "other"), [("search", "train", "training"), ("training", "search", "search")]
)
def test_resuming_the_other_kind_of_run_or_an_empty_config_says_so(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], kind: str, command: str, other: str
) -> None:
    from autodeeplab.config.settings import dump_config_yaml
    from autodeeplab.train.config import TrainConfig

    run = tmp_path / "run"
    run.mkdir()
    dump_config_yaml(SearchConfig() if kind == "search" else TrainConfig(), run / "config.yaml", {"seed": 0})
    before = (run / "config.yaml").read_bytes()
    assert main([command, "--resume", str(run), "-q"]) == 2
    assert (run / "config.yaml").read_bytes() == before
    right = "search" if kind == "search" else "train"
    assert one_line_error(capsys, command) == (
        f"{run}: a {kind} run, not a {other} run; resume it with 'autodeeplab {right} --resume {run}'"
    )
    (run / "config.yaml").write_text("")
    assert main([command, "--resume", str(run), "-q"]) == 2
    assert "config.yaml: empty, so this is not a" in one_line_error(capsys, command)
    assert (run / "config.yaml").read_text() == ""  # nothing rewritten
