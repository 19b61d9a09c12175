"""Pictures: what is drawn matches the data (β widths, path, ops, α/β history), labels do not collide,
and a run directory renders into readable, non-empty PNGs."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from autodeeplab.decode import arch_params_to_dict, decode, decode_cell
from autodeeplab.genotype import PAPER, Genotype
from autodeeplab.plots import (
    MAX_EDGE_WIDTH,
    OP_STYLE,
    describe_genotype,
    figure_arch_history,
    figure_cell,
    figure_curves,
    figure_network_path,
    plot_network_path,
    render_run,
)
from autodeeplab.runs import RunDir
from autodeeplab.topology import beta_mask, num_edges


def random_arch(rng: np.random.Generator, layers: int, blocks: int, sharpness: float = 1.0):
    """Softmax α ``[E, 8]`` and outgoing-normalised β ``[L, 4, 3]`` (0 on missing edges)."""
    logits = rng.normal(size=(num_edges(blocks), 8)) * sharpness
    alpha = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    mask = beta_mask(layers, 4)
    weights = np.where(mask, np.exp(rng.normal(size=(layers, 4, 3)) * sharpness), 0.0)
    total = weights.sum(axis=2, keepdims=True)
    return alpha, np.divide(weights, total, out=np.zeros_like(weights), where=total > 0)


def make_run(path: Path, epochs: int = 3, layers: int = 6, blocks: int = 5, seed: int = 0) -> RunDir:
    """A run directory with the files a search writes (arch_params, history, genotype, metrics)."""
    rng = np.random.default_rng(seed)
    run = RunDir(path)
    for epoch in range(1, epochs + 1):
        alpha, beta = random_arch(rng, layers, blocks, sharpness=epoch)
        run.append_jsonl("arch_history.jsonl", {"epoch": epoch, **arch_params_to_dict(alpha, beta)})
        run.append_jsonl(
            "metrics.jsonl",
            {
                "phase": "search",
                "epoch": epoch,
                "train_loss": 2.0 / epoch,
                "val_miou": 0.1 * epoch,
                "lr": 0.02,
            },
        )
    run.write_json("arch_params.json", arch_params_to_dict(alpha, beta))
    decode(alpha, beta, blocks).save(run.file("genotype.json"))
    return run


def test_describe_paper_genotype():
    assert describe_genotype(PAPER).splitlines() == [
        "Network path (12 layers after the stem at output stride 4):",
        "  layer           1  2  3  4  5  6  7  8  9 10 11 12",
        "  output stride   4  4  4  8 16  8 16 16 32 32 16  8",
        "Cell (5 blocks; output = concatenation of all blocks):",
        "  block 0: atr_conv_5x5(h^{l-2}) + sep_conv_3x3(h^{l-1})",
        "  block 1: sep_conv_3x3(h^{l-2}) + atr_conv_3x3(h^{l-1})",
        "  block 2: sep_conv_3x3(block 1) + sep_conv_3x3(h^{l-2})",
        "  block 3: sep_conv_5x5(block 2) + sep_conv_5x5(block 0)",
        "  block 4: sep_conv_5x5(block 1) + atr_conv_5x5(block 3)",
        "Short form: " + PAPER.short(),
    ]


def _by_gid(fig, gid: str) -> list:
    return [artist for artist in fig.findobj() if artist.get_gid() == gid]


def test_network_path_draws_every_edge_with_width_from_beta():
    alpha, beta = random_arch(np.random.default_rng(1), layers=7, blocks=2)
    genotype = decode(alpha, beta, 2)
    fig = figure_network_path(beta, genotype)
    edges = _by_gid(fig, "beta-edge")
    assert len(edges) == int(beta_mask(7, 4).sum())  # every edge of the trellis, none more
    for line in edges:
        (x0, _), (y0, y1) = line.get_xdata(), line.get_ydata()
        weight = beta[int(x0), int(y0), int(y1 - y0) + 1]
        assert line.get_linewidth() == pytest.approx(0.4 + MAX_EDGE_WIDTH * weight)
    (path,) = _by_gid(fig, "network-path")
    assert list(path.get_ydata()) == [0, *genotype.network_path] and list(path.get_xdata()) == list(range(8))
    with pytest.raises(ValueError, match=r"beta: expected \[12, levels, 3\] for this path, got \[7, 4, 3\]"):
        figure_network_path(beta, PAPER)


def test_network_path_without_beta_draws_the_trellis_evenly():
    fig = figure_network_path(None, PAPER)
    widths = {line.get_linewidth() for line in _by_gid(fig, "beta-edge")}
    assert len(_by_gid(fig, "beta-edge")) == int(beta_mask(12, 4).sum()) and len(widths) == 1
    assert list(_by_gid(fig, "network-path")[0].get_ydata()) == [0, *PAPER.network_path]


def _random_genotype(seed: int, blocks: int) -> Genotype:
    rng = np.random.default_rng(seed)
    ops = [op for op in OP_STYLE if op != "none"]
    cell = []
    for i in range(blocks):
        inputs = rng.choice(i + 2, size=2, replace=False)
        cell.append([[ops[rng.integers(len(ops))], int(j)] for j in inputs])
    return Genotype.from_dict({"version": 1, "network_path": [0, 1], "cell": cell})


CELLS = [
    PAPER,
    _random_genotype(0, 1),
    _random_genotype(1, 3),
    _random_genotype(2, 5),
    _random_genotype(3, 6),
]


@pytest.mark.parametrize("genotype", CELLS, ids=["paper", "1-block", "3-block", "5-block", "6-block"])
def test_cell_labels_every_edge_with_its_op_and_nothing_overlaps(genotype):
    fig = figure_cell(genotype)
    labels = _by_gid(fig, "op-label")
    expected = Counter(OP_STYLE[op][0] for block in genotype.cell for op, _ in block)
    assert Counter(t.get_text() for t in labels) == expected
    assert len(_by_gid(fig, "op-edge")) == 2 * genotype.num_blocks
    assert len(_by_gid(fig, "concat-edge")) == genotype.num_blocks
    nodes = _by_gid(fig, "cell-node")
    names = sorted(t.get_text() for t in nodes)
    assert names == sorted(
        ["$h^{l-2}$", "$h^{l-1}$", "concat\n$h^{l}$"] + [f"block {i}" for i in range(genotype.num_blocks)]
    )
    fig.canvas.draw()  # lays out the boxes drawn around the texts
    boxes = [t.get_bbox_patch().get_window_extent() for t in labels + nodes]
    for i, a in enumerate(boxes):
        for b in boxes[i + 1 :]:
            assert not a.overlaps(b), "two labels or nodes of the cell picture overlap"


def test_arch_history_shows_edge_strength_and_beta_per_node():
    rng = np.random.default_rng(2)
    history = []
    for epoch in (1, 2, 3, 4):
        alpha, beta = random_arch(rng, layers=5, blocks=3, sharpness=epoch)
        history.append({"epoch": epoch, **arch_params_to_dict(alpha, beta)})
    fig = figure_arch_history(history)
    ax_alpha, ax_beta = fig.axes[:2]
    strength = ax_alpha.images[0].get_array()
    expected = np.array([np.max(np.array(r["alpha"])[:, 1:], axis=1) for r in history]).T  # [E, epochs]
    np.testing.assert_allclose(strength, expected)
    colours = ax_beta.images[0].get_array()  # [nodes, epochs, 3]: row 0 is the stem (layer 0, level 0)
    np.testing.assert_allclose(colours[0], [r["beta"][0][0] for r in history])
    assert colours.shape == (1 + 2 + 3 + 4 + 4, 4, 3)
    bold = [i for i, t in enumerate(ax_alpha.get_yticklabels()) if t.get_fontweight() == "bold"]
    kept = sorted(b * (b + 3) // 2 + idx for b, block in enumerate(decode_cell(alpha, 3)) for _, idx in block)
    assert bold == kept


def test_curves_plot_the_logged_values():
    metrics = [
        {"step": 10, "loss": 1.5, "lr": 0.01},
        {"step": 20, "loss": 1.0, "lr": 0.005},
        {"step": 20, "split": "val", "miou": 0.4, "pixel_accuracy": 0.8},
    ]
    fig = figure_curves(metrics)
    titles = [ax.get_title() for ax in fig.axes]
    assert titles == ["loss", "mIoU", "learning rate"]
    (loss,) = fig.axes[0].get_lines()
    assert list(loss.get_xdata()) == [10, 20] and list(loss.get_ydata()) == [1.5, 1.0]
    (miou,) = fig.axes[1].get_lines()
    assert miou.get_label() == "val miou" and list(miou.get_ydata()) == [0.4]
    with pytest.raises(ValueError, match="no loss, mIoU or learning-rate values"):
        figure_curves([{"step": 1, "images": 3}])


def _assert_real_png(path: Path) -> None:
    with Image.open(path) as image:
        assert image.format == "PNG" and image.width > 300 and image.height > 150
        pixels = np.asarray(image.convert("L"))
    assert pixels.std() > 5  # something is drawn, not a blank canvas


def test_render_run_writes_every_picture(tmp_path):
    run = make_run(tmp_path / "run")
    written = render_run(run.path)
    names = ["network_path.png", "cell.png", "arch_history.png", "curves.png"]
    assert written == [run.path / "plots" / name for name in names]
    for path in written:
        _assert_real_png(path)
    # Without the optional files only the architecture is drawn; an empty run draws nothing.
    (run.path / "arch_history.jsonl").unlink()
    (run.path / "metrics.jsonl").unlink()
    assert [p.name for p in render_run(run.path, tmp_path / "out")] == names[:2]
    assert render_run(RunDir(tmp_path / "empty").path) == []


def test_plot_writes_atomically(tmp_path):
    out = tmp_path / "deep" / "path.png"
    assert plot_network_path(None, PAPER, out) == out
    _assert_real_png(out)
    assert [p.name for p in out.parent.iterdir()] == ["path.png"]
