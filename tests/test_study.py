"""``autodeeplab study`` (issue 19): members run once and resume, the report's figures from its eval files."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from test_pipeline_resume import SEARCH, TRAIN, sets  # the same tiny search and training

from autodeeplab.cli.main import main
from autodeeplab.space.autodeeplab.genotype import Genotype
from autodeeplab.study.inherited import kendall_tau
from autodeeplab.study.report import agreement, group_stats


def test_a_tiny_study_runs_resumes_and_reports(tmp_path: Path, monkeypatch, capsys) -> None:
    out = tmp_path / "study"
    args = ["study", "-q", "-o", str(out), "--seeds", "2", "--random", "2", "--budgets", "1", "2"]
    args += ["--train-preset", "synthetic", *sets("--search-set", SEARCH), *sets("--train-set", TRAIN)]
    assert main(args) == 0
    members = ["search-0", "search-1", "random-0", "random-1", "paper"]
    scores = {}
    for member in members:
        for budget, steps in (("1", 2), ("2", 4)):
            run = out / member / f"train-x{budget}-s0"
            assert json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])["step"] == steps
            scores[member, budget] = json.loads((run / "eval.json").read_text())["miou"]
    # the random draws are genotypes of the search space (3 layers)
    for k in (0, 1):
        assert Genotype.load(out / f"random-{k}" / "genotype.json").num_layers == 3
    report = json.loads((out / "report.json").read_text())
    for budget in ("1", "2"):
        figures = report["budgets"][budget]
        searched = [scores["search-0", budget], scores["search-1", budget]]
        random = [scores["random-0", budget], scores["random-1", budget]]
        assert figures["groups"]["searched"]["mean"] == pytest.approx(sum(searched) / 2)
        assert figures["groups"]["random"]["std"] == pytest.approx(abs(random[0] - random[1]) / math.sqrt(2))
        mean_r = sum(random) / 2
        assert figures["relative_improvement"] == pytest.approx(100 * (sum(searched) / 2 - mean_r) / mean_r)
        assert [p["difference"] for p in figures["pairs"]] == pytest.approx(
            [searched[0] - random[0], searched[1] - random[1]]
        )
    inherited = json.loads((out / "inherited.json").read_text())
    assert sorted(inherited) == ["random-0", "random-1", "search-0", "search-1"]  # the paper's is L=12
    assert all(0 <= v <= 1 for v in inherited.values())
    names = sorted(inherited)
    tau = kendall_tau([inherited[m] for m in names], [scores[m, "1"] for m in names])
    assert report["budgets"]["1"]["kendall_tau"] == {
        "tau": pytest.approx(tau, nan_ok=True),
        "architectures": 4,
    }
    assert (out / "report.md").read_text().startswith("# Study")
    assert (out / "search_curves.png").stat().st_size > 0

    # Resume: nothing finished runs again.
    import autodeeplab.study.members as members_module

    def must_not_run(*a, **k):
        raise AssertionError("a finished member ran again")

    monkeypatch.setattr(members_module, "run_training", must_not_run)
    capsys.readouterr()
    assert main(["study", "--resume", str(out), "-q"]) == 0
    assert main(["study", "--report", str(out)]) == 0
    assert "Relative improvement" in capsys.readouterr().out


def test_refusals_are_one_line(tmp_path: Path, capsys) -> None:
    assert main(["study", "--resume", str(tmp_path)]) == 2
    assert main(["study", "-o", str(tmp_path / "a"), "--report", str(tmp_path)]) == 2
    assert main(["study", "-o", str(tmp_path / "b"), "--seeds", "0", "--random", "0", "--no-paper"]) == 2
    err = capsys.readouterr().err
    assert "not a study folder" in err and "exactly one of" in err and "no member" in err
    assert "Traceback" not in err


def test_group_statistics_and_agreement_by_hand() -> None:
    assert group_stats([0.5, 0.7]) == {"n": 2, "mean": pytest.approx(0.6), "std": pytest.approx(0.1414213562)}
    assert group_stats([0.4])["std"] == 0.0
    cell = ((("sep_conv_3x3", 0), ("skip_connect", 1)),)
    a = Genotype(network_path=(0, 1, 2), cell=cell)
    b = Genotype(network_path=(0, 1, 1), cell=cell)
    c = Genotype(network_path=(1, 1, 1), cell=((("sep_conv_3x3", 0), ("max_pool_3x3", 1)),))
    figures = agreement([a, b, c])
    assert figures["path"] == pytest.approx((2 / 3 + 1 + 2 / 3) / 3)
    assert figures["cell"] == pytest.approx((1 + 2 / 3) / 2)


def test_members_in_parallel_processes_give_the_sequential_results(tmp_path: Path, monkeypatch) -> None:
    import torch

    import autodeeplab.study.members as members_module

    # each child gets cpu_count // jobs threads: as many as this process has, for bit-equal results
    monkeypatch.setattr(members_module.os, "cpu_count", lambda: 2 * torch.get_num_threads())
    common = ["--seeds", "1", "--random", "1", "--no-paper", "--budgets", "1", "--train-preset", "synthetic"]
    common += [*sets("--search-set", SEARCH), *sets("--train-set", TRAIN)]
    assert main(["study", "-q", "-o", str(tmp_path / "one"), *common]) == 0
    assert main(["study", "-q", "-o", str(tmp_path / "two"), "--jobs", "2", *common]) == 0
    for member in ("search-0", "random-0"):
        one = json.loads((tmp_path / "one" / member / "train-x1-s0" / "eval.json").read_text())
        two = json.loads((tmp_path / "two" / member / "train-x1-s0" / "eval.json").read_text())
        assert one["miou"] == two["miou"], member  # same seeds, same data: the same run
    assert (tmp_path / "two" / "search-0" / "study.log").exists()


def test_a_dints_study_on_volumes_scores_dice(tmp_path: Path, capsys) -> None:
    """The DiNTS space on tiny NIfTI volumes: searched and random topologies, Dice from `eval`."""
    pytest.importorskip("nibabel")
    from test_volumes_end_to_end import VOLUME_DATA, write_volumes

    root = write_volumes(tmp_path / "vol")
    out = tmp_path / "study"
    search = ["search_space=dints", "dints.depths=2", "dints.blocks=2", "dints.channels=4", "epochs=2"]
    search += [
        "arch_start_epoch=1",
        "batch_size=2",
        "steps_per_epoch=1",
        "device=cpu",
        "space.spatial_dims=3",
    ]
    search += [*VOLUME_DATA, "data.max_val_images=1"]
    train = [*VOLUME_DATA, "model.spatial_dims=3", "dints.channels=4", "iterations=2", "eval_every=0"]
    args = ["study", "-q", "-o", str(out), "--seeds", "1", "--random", "1", "--no-paper", "--budgets", "1"]
    args += ["--data-root", str(root), "--search-preset", "cpu", "--train-preset", "tiny"]
    assert main([*args, *sets("--search-set", search), *sets("--train-set", train)]) == 0, capsys.readouterr()
    for member in ("search-0", "random-0"):
        result = json.loads((out / member / "train-x1-s0" / "eval.json").read_text())
        assert 0 <= result["mean_dice"] <= 1
    assert (out / "random-0" / "dints_arch.json").exists()
    report = json.loads((out / "report.json").read_text())
    assert report["scores"]["random-0"]["1"] == pytest.approx(
        json.loads((out / "random-0" / "train-x1-s0" / "eval.json").read_text())["mean_dice"]
    )
    inherited = json.loads((out / "inherited.json").read_text())  # DiNTS topologies in search-0's supernet
    assert sorted(inherited) == ["random-0", "search-0"] and all(0 <= v <= 1 for v in inherited.values())
    assert report["inherited"] == inherited
    assert main(["study", "-q", "-o", str(tmp_path / "x"), "--search-set", "search_space=dints"]) == 2
    assert "paper genotype is an Auto-DeepLab architecture" in capsys.readouterr().err
