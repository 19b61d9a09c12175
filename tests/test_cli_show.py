"""``autodeeplab show``: PNGs and a summary for the paper genotype, a search run, and genotype files."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

from autodeeplab.cli.main import main
from autodeeplab.runs.rundir import RunDir, read_jsonl
from autodeeplab.space.autodeeplab.decode import arch_params_to_dict, decode
from autodeeplab.space.autodeeplab.genotype import PAPER
from autodeeplab.space.autodeeplab.topology import beta_mask, num_edges
from autodeeplab.viz.common import DPI
from autodeeplab.viz.history import figure_arch_history
from autodeeplab.viz.plots import describe_genotype


def _fake_search_run(path: Path, epochs: int = 2, layers: int = 4, blocks: int = 5) -> Path:
    """The files a search leaves in its run directory, with random but valid α/β."""
    rng = np.random.default_rng(0)
    run = RunDir(path)
    for epoch in range(1, epochs + 1):
        alpha = rng.dirichlet(np.ones(8), size=num_edges(blocks))
        beta = np.where(beta_mask(layers, 4), rng.random((layers, 4, 3)) + 0.1, 0.0)
        beta /= np.maximum(beta.sum(axis=2, keepdims=True), 1e-12)
        run.append_jsonl("arch_history.jsonl", {"epoch": epoch, **arch_params_to_dict(alpha, beta)})
        run.append_jsonl(
            "metrics.jsonl", {"phase": "search", "epoch": epoch, "train_loss": 1.0 / epoch, "lr": 0.02}
        )
    run.write_json("arch_params.json", arch_params_to_dict(alpha, beta))
    decode(alpha, beta, blocks).save(run.file("genotype.json"))
    return run.path


def _png_ok(path: Path) -> bool:
    with Image.open(path) as image:
        return image.format == "PNG" and np.asarray(image.convert("L")).std() > 5


def test_show_paper_renders_pngs_and_prints_summary(tmp_path, capsys):
    assert main(["show", "paper", "--output", str(tmp_path / "out")]) == 0
    out = capsys.readouterr().out
    assert out.startswith(describe_genotype(PAPER) + "\n")
    pngs = sorted((tmp_path / "out").iterdir())
    assert [p.name for p in pngs] == ["cell.png", "network_path.png"]
    assert all(p.stat().st_size > 10_000 and _png_ok(p) for p in pngs)
    assert f"wrote {tmp_path / 'out' / 'cell.png'}" in out


def test_show_search_run_renders_everything_into_its_plots(tmp_path, capsys):
    run = _fake_search_run(tmp_path / "run")
    assert main(["show", str(run)]) == 0
    out = capsys.readouterr().out
    names = ["network_path.png", "cell.png", "arch_history.png", "curves.png"]
    assert [line.split("/")[-1] for line in out.splitlines() if line.startswith("wrote ")] == names
    assert all(_png_ok(run / "plots" / name) for name in names)
    assert "Cell (5 blocks" in out and "Network path (4 layers" in out


def test_show_files_and_text_only(tmp_path, capsys):
    run = _fake_search_run(tmp_path / "run")
    assert main(["show", str(run / "genotype.json")]) == 0
    assert sorted(p.name for p in (run / "genotype_plots").iterdir()) == ["cell.png", "network_path.png"]
    assert main(["show", str(run / "arch_params.json"), "-o", str(tmp_path / "ap")]) == 0
    assert _png_ok(tmp_path / "ap" / "network_path.png")
    capsys.readouterr()
    assert main(["show", str(run / "genotype.json"), "--no-plots", "-o", str(tmp_path / "none")]) == 0
    assert not (tmp_path / "none").exists()
    assert capsys.readouterr().out.startswith("Network path (4 layers")


def test_show_errors_are_one_line(tmp_path, capsys):
    assert main(["show", str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (
        f"autodeeplab show: error: {tmp_path / 'missing'}: not a run directory, a genotype or arch_params "
        "file, or a built-in genotype (paper)"
    )
    empty = RunDir(tmp_path / "empty").path
    assert main(["show", str(empty)]) == 2
    assert "nothing to show" in capsys.readouterr().err
    bad = tmp_path / "g.json"
    bad.write_text(
        json.dumps(
            {"version": 1, "network_path": [0, 2], "cell": [[["sep_conv_3x3", 0], ["skip_connect", 1]]]}
        )
    )
    assert main(["show", str(bad)]) == 2
    assert (
        capsys.readouterr()
        .err.strip()
        .endswith("network_path[1]: level 2 jumps more than one level from level 0 of the layer before")
    )


def test_show_one_epoch_search_draws_a_chart_per_edge_and_node(tmp_path, capsys):
    run = _fake_search_run(tmp_path / "run", epochs=1, layers=12)
    assert main(["show", str(run), "-o", str(tmp_path / "out")]) == 0
    assert "wrote " + str(tmp_path / "out" / "arch_history.png") in capsys.readouterr().out
    records = read_jsonl(run / "arch_history.jsonl")
    fig = figure_arch_history(records)
    assert len([ax for ax in fig.axes if ax.get_gid() == "alpha-edge"]) == num_edges(5)
    assert len([ax for ax in fig.axes if ax.get_gid() == "beta-node"]) == 1 + 2 + 3 + 4 * 9
    width, height = fig.get_size_inches() * DPI
    with Image.open(tmp_path / "out" / "arch_history.png") as image:  # tight bbox trims margins only
        assert 0.8 * width <= image.width <= 1.05 * width and 0.8 * height <= image.height <= 1.05 * height
    assert _png_ok(tmp_path / "out" / "arch_history.png")


def test_show_broken_history_is_one_line_and_writes_nothing(tmp_path, capsys):
    run = _fake_search_run(tmp_path / "run", epochs=1)
    other = _fake_search_run(tmp_path / "other", epochs=1, layers=5)
    lines = (run / "arch_history.jsonl").read_text() + (other / "arch_history.jsonl").read_text()
    (run / "arch_history.jsonl").write_text(lines)
    assert main(["show", str(run)]) == 2
    captured = capsys.readouterr()
    assert captured.err.strip() == (
        f"autodeeplab show: error: {run / 'arch_history.jsonl'}: record 2: alpha [20, 8] / beta [5, 4, 3] "
        "differ from the first record's [20, 8] / [4, 4, 3]"
    )
    assert "Traceback" not in captured.err and not (run / "plots").exists()


def test_show_says_which_pictures_it_left_out_and_refuses_unreadable_records(tmp_path, capsys):
    run = _fake_search_run(tmp_path / "run")
    (run / "arch_history.jsonl").write_text('{"epoch": 1, "alpha": [[0.1, 0.9]')  # one torn line
    (run / "metrics.jsonl").write_text('{"epoch": 1}\n')  # nothing to draw
    assert main(["show", str(run), "-o", str(tmp_path / "pictures")]) == 0
    err = capsys.readouterr().err
    assert "arch_history.png left out" in err and "curves.png left out" in err, err
    assert sorted(p.name for p in (tmp_path / "pictures").iterdir()) == ["cell.png", "network_path.png"]
    (run / "metrics.jsonl").write_bytes(b"\xd6\xff\x00garbage\n")
    assert main(["show", str(run), "-o", str(tmp_path / "pictures")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "metrics.jsonl: not a JSON-lines text file" in err, err
