"""Files of runs, models and studies edited or written by other code: a model's info of the wrong types, a
metrics line that is not an object, a broken study plan, settings a flag would have refused. Each is one
line and exit 2, never a traceback in the middle of the work."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from test_outputs import refused, user  # noqa: F401  (the fixture: a search run, model.pt, images)

from autodeeplab.checkpoint_io import load_checkpoint, save_checkpoint
from autodeeplab.cli.main import main
from autodeeplab.errors import CheckpointError
from autodeeplab.nets.model_file import load_model


def edited_model(user: Path, **info) -> Path:  # noqa: F811
    record = load_checkpoint(user / "train" / "model.pt")
    record["info"].update(info)
    path = user / "edited.pt"
    save_checkpoint(path, record)
    return path


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"palette": [[0, 0, 0]]}, "palette"),  # fewer colours than classes
        ({"palette": "red"}, "palette"),
        ({"class_names": "road"}, "class_names"),  # a string is not 4 one-letter classes
        ({"ignore_index": "255"}, "ignore_index"),
        ({"patch_size": [0, 4, 4]}, "patch_size"),
        ({"extra": 1}, "unknown field 'extra'"),
    ],
)
def test_a_model_whose_info_is_not_what_this_package_writes_is_refused_at_load(user, change, field, capsys):  # noqa: F811
    path = edited_model(user, **change)
    with pytest.raises(CheckpointError, match=field):
        load_model(path)
    err = refused(["predict", str(path), str(user / "images" / "a.png"), "-o", str(user / "out")], capsys)
    assert str(path) in err and field in err
    assert not (user / "out").exists()


def test_eval_refuses_three_window_sizes_for_images_given_by_set(user, capsys):  # noqa: F811
    argv = ["eval", str(user / "train" / "model.pt"), "--dataset", "synthetic", "--split", "val"]
    err = refused([*argv, "--no-json", "--set", "window=[8,8,8]"], capsys)
    assert "window: images take two sizes (H W), got [8, 8, 8]" in err


def test_metrics_lines_that_are_not_objects_or_count_steps_otherwise_are_refused(user, capsys):  # noqa: F811
    metrics = user / "search" / "metrics.jsonl"
    lines = metrics.read_text().splitlines()
    for bad, words in (("[1, 2]", "line 2 is not a JSON object"), ('{"epoch": "1"}', "line 2: epoch is not")):
        metrics.write_text("\n".join([lines[0], bad, *lines[1:]]) + "\n")
        err = refused(["show", str(user / "search"), "-o", str(user / "pics")], capsys)
        assert words in err and str(metrics) in err
    metrics.write_text("\n".join([*lines, '{"epoch": 9, "loss']))  # a torn last line: left out
    assert main(["show", str(user / "search"), "--no-plots"]) == 0


@pytest.mark.parametrize(
    ("plan", "words"),
    [
        (b"\xff\xfe", "cannot read config"),
        (b"seeds: [1,\n", "not valid YAML"),
        (b"- 1\n", "expected a mapping"),
        (b"seeds: 1\nbudget: [1]\n", "unknown key 'budget'"),
        (b"seeds: -1\n", "study.seeds: must be a whole number"),
        (b"budgets: [.nan]\n", "a field of the wrong type"),
        (b"retrain_seeds: [true]\n", "a field of the wrong type"),
    ],
)
def test_a_broken_study_plan_is_one_line_for_report_and_resume(tmp_path, plan, words, capsys):
    (tmp_path / "study.yaml").write_bytes(plan)
    for flag in ("--report", "--resume"):
        assert words in refused(["study", flag, str(tmp_path)], capsys)


def test_a_study_report_names_a_broken_evaluation_of_a_member(tmp_path, capsys):
    (tmp_path / "study.yaml").write_text("seeds: 0\nrandom: 0\npaper: true\nbudgets: [1]\n")
    evaluation = tmp_path / "paper" / "train-x1-s0" / "eval.json"
    evaluation.parent.mkdir(parents=True)
    evaluation.write_text('{"miou": ')
    assert str(evaluation) in refused(["study", "--report", str(tmp_path)], capsys)
    evaluation.write_text(json.dumps({"miou": "high"}))
    assert "no number 'miou'" in refused(["study", "--report", str(tmp_path)], capsys)
