"""The search projection arithmetic, the memory-only ``--estimate-no-time``, ``--threads``, and the benchmark
helpers that need no GPU (the paper projection of a GPU record, the CPU model, the scaling tables)."""

from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path

import pytest
import torch

from autodeeplab.cli.main import main
from autodeeplab.fast.supernet import FastSearchNetwork
from autodeeplab.search import estimate
from autodeeplab.search.estimate import SearchEstimate, SearchSchedule, projected_search_seconds

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
TINY = [
    "space.filter_multiplier=2",
    "space.num_layers=2",
    "space.num_blocks=2",
    "space.stem_channels=[4,4,8]",
    "data.crop_size=32",
    "data.synthetic_size=[32,32]",
    "data.synthetic_train_samples=8",
    "batch_size=2",
    "epochs=2",
    "arch_start_epoch=1",
    "device=cpu",
]


def bench_module(name: str):
    """Import ``benchmarks/<name>.py`` the way it runs as a script (its folder first on the path)."""
    sys.path.insert(0, str(BENCHMARKS))
    try:
        return importlib.import_module(name)
    finally:
        sys.path.remove(str(BENCHMARKS))


def test_paper_schedule_has_744_weight_steps_per_epoch():
    schedule = SearchSchedule()
    assert (schedule.train_images, schedule.batch_size, schedule.epochs, schedule.arch_start_epoch) == (
        2975,
        2,
        40,
        20,
    )
    assert schedule.steps_per_epoch == 744  # trainA = 1,488 images (the larger half), full batches of 2


def test_projected_search_seconds_counts_arch_steps_from_their_epoch_only():
    # 744 steps x (40 epochs x 1 s + 20 epochs x 2 s)
    assert projected_search_seconds(1.0, 2.0, 744, 40, 20) == 744 * 80
    assert projected_search_seconds(1.0, 2.0, 10, 5, 9) == 50  # warm-up longer than the run: no arch step
    e = SearchEstimate("cpu", 321, 2, 0, 0, 0, 1.0, 2.0, 744, epochs=40, arch_start_epoch=20)
    assert e.search_hours == pytest.approx(744 * 80 / 3600)


def test_bench_records_the_paper_projection_only_at_the_papers_setting():
    bench = bench_module("bench_search")
    paper = {"size": 321, "batch": 2, "filters": 8, "layers": 12}
    projection = bench.paper_projection(paper, 0.5, 0.75)
    assert projection["weight_steps_per_epoch"] == 744
    assert projection["hours"] == round(744 * (40 * 0.5 + 20 * 0.75) / 3600, 3)  # 7.233 hours
    assert bench.paper_projection({**paper, "size": 129}, 0.5, 0.75) is None


def test_cpu_model_reads_proc_cpuinfo(tmp_path, monkeypatch):
    machine = bench_module("machine_info")
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nvendor_id\t: GenuineIntel\nmodel name\t: Example CPU @ 2.60GHz\n")
    assert machine.cpu_model(cpuinfo) == "Example CPU @ 2.60GHz"
    monkeypatch.setattr(machine.platform, "processor", lambda: "fallback")
    assert machine.cpu_model(tmp_path / "missing") == "fallback"
    assert machine.machine_info("cpu")["cpu_count"] >= 1


def test_scaling_table_pivots_the_series_and_skips_smoke_tests(tmp_path):
    tables = bench_module("search_tables")
    base = {
        "variant": "exact",
        "filters": 8,
        "layers": 12,
        "threads": 1,
        "device": "cpu",
        "series": "scaling",
    }
    lines = [
        {**base, "benchmark": "search_memory", "size": 65, "saved_gib_max": 0.433},
        {**base, "benchmark": "search_memory", "size": 321, "saved_gib_max": 5.25, "scaled_from": 97},
        {**base, "benchmark": "search_memory", "size": 65, "saved_gib_max": 9.0, "smoke_test": True},
    ]
    path = tmp_path / "results.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in lines))
    table = tables.scaling_tables(path)
    assert "| 8 | 12 | 65 | 0.433 |" in table
    assert "| 8 | 12 | 321 | 5.250 |" in table
    assert "9.000" not in table


def tiny_estimate_args(*flags: str) -> list[str]:
    return ["search", *flags, "--quiet"] + [part for s in TINY for part in ("--set", s)]


def test_memory_only_estimate_runs_one_forward_per_step_kind_and_times_nothing(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)

    def no_timing(*args, **kwargs):
        raise AssertionError("a memory-only estimate must not time steps")

    forwards = []
    original = FastSearchNetwork.forward  # what build_supernet builds
    monkeypatch.setattr(estimate, "_time_steps", no_timing)
    monkeypatch.setattr(
        FastSearchNetwork, "forward", lambda self, x: forwards.append(x.shape) or original(self, x)
    )
    assert main(tiny_estimate_args("--estimate-no-time")) == 0
    out = capsys.readouterr().out
    assert "activations kept for backward: weight step" in out
    assert "time: not measured (memory-only estimate" in out
    assert "s per iteration" not in out
    assert forwards == [(2, 3, 32, 32)] * 2  # the weight step's forward and the architecture step's: fast
    assert list(tmp_path.iterdir()) == []


def test_estimate_threads_apply_to_the_calibration_and_are_restored(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    seen = []
    real = estimate.estimate_search

    def spy(*args, **kwargs):
        seen.append(torch.get_num_threads())
        return real(*args, **kwargs)

    monkeypatch.setattr(estimate, "estimate_search", spy)
    before = torch.get_num_threads()
    # memory only: two threads timing tiny steps on a shared 2-core machine would be slow (conftest.py)
    assert main(tiny_estimate_args("--estimate-no-time", "--threads", "2")) == 0
    assert seen == [2] and torch.get_num_threads() == before
    assert "activations kept for backward" in capsys.readouterr().out


def test_estimate_threads_must_be_positive(capsys):
    assert main(tiny_estimate_args("--estimate", "--threads", "0")) == 2
    assert (
        capsys.readouterr().err.strip() == "autodeeplab search: error: --threads: must be at least 1, got 0"
    )


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (
            ["search", "--threads", "2"],
            "--threads sets the threads of --estimate's calibration; give --estimate too",
        ),
        (
            ["search", "--estimate", "-o", "x"],
            "--estimate writes nothing and runs no search; drop --output/--resume",
        ),
        (
            ["search", "--resume", "r", "-o", "x"],
            "--resume continues the run in its own folder; drop --output",
        ),
        (
            ["train", "--resume", "r", "-o", "x"],
            "--resume continues the run in its own folder; drop --output",
        ),
    ],
)
def test_flags_a_mode_would_ignore_are_refused(tmp_path, capsys, monkeypatch, argv, message):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "r").mkdir()
    (tmp_path / "r" / "config.yaml").write_text("seed: 0\n")
    assert main(argv) == 2
    assert capsys.readouterr().err.strip() == f"autodeeplab {argv[0]}: error: {message}"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r"]
