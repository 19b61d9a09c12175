"""Pictures of a search or training run (matplotlib, Agg canvas; no Graphviz, no pyplot state).

- :func:`plot_network_path`: the L × levels trellis (layers on x, output stride 4..32 on y), every edge
  drawn with a width ∝ β and the decoded path over it (paper Fig. 3, left).
- :func:`plot_cell`: the cell as a graph: h^{l-2}, h^{l-1}, the blocks, the concatenated output; edges
  coloured and labelled by their op (Fig. 3, right).
- :func:`plot_arch_history`: α per edge and β per node over the epochs, as small line charts, and
  :func:`plot_curves`: losses, mIoU and learning rate (both in :mod:`autodeeplab.viz.history`).
- :func:`render_run`: all of these that a run directory allows, into ``run_dir/plots``.
- :func:`describe_genotype`: the text summary printed next to the pictures.
- A DiNTS run: :func:`~autodeeplab.viz.dints.render_dints_run` (the topology grid, weights over epochs).

Inputs follow the run directory formats: β ``[L, levels, 3]`` with ``β[l, s, d]`` the weight of the edge
from node ``(l, s)`` to ``(l+1, s+d-1)`` (see :mod:`autodeeplab.space.autodeeplab.topology`), α ``[E, P]``
softmax weights in
``PRIMITIVES`` order with edges block by block. PNGs are written atomically.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch

from autodeeplab.fileio import loads_json
from autodeeplab.ops.primitives import PRIMITIVES
from autodeeplab.runs.rundir import read_jsonl
from autodeeplab.space.autodeeplab.decode import decode_cell, load_arch_params, viterbi_path
from autodeeplab.space.autodeeplab.genotype import DEFAULT_NUM_LEVELS, Genotype
from autodeeplab.space.autodeeplab.topology import node_exists, output_stride
from autodeeplab.viz.common import (
    EDGE_COLOR,
    INPUT_NAMES,
    PATH_COLOR,
    input_name,
    new_figure,
    op_style,
    save_png,
)
from autodeeplab.viz.dints import holds_dints_architecture, render_dints_run
from autodeeplab.viz.history import (
    arch_history,
    curve_series,
    plot_arch_history,
    plot_curves,
)

MAX_EDGE_WIDTH = 7.0  # points, for β = 1


def describe_genotype(genotype: Genotype) -> str:
    """A multi-line summary: the path as output strides per layer, then each block's two inputs and ops."""
    strides = [output_stride(level) for level in genotype.network_path]
    width = max(len(str(s)) for s in strides + [genotype.num_layers])
    layers = " ".join(f"{i:>{width}}" for i in range(1, genotype.num_layers + 1))
    lines = [
        f"Network path ({genotype.num_layers} layers after the stem at output stride 4):",
        f"  layer          {layers}",
        f"  output stride  {' '.join(f'{s:>{width}}' for s in strides)}",
        f"Cell ({genotype.num_blocks} blocks; output = concatenation of all blocks):",
    ]
    for i, block in enumerate(genotype.cell):
        ops = " + ".join(f"{op}({input_name(idx)})" for op, idx in block)
        lines.append(f"  block {i}: {ops}")
    lines.append(f"Short form: {genotype.short()}")
    return "\n".join(lines)


# -- the network level ------------------------------------------------------------------------------------
def plot_network_path(
    beta: Any | None,
    genotype_or_path: Genotype | Sequence[int],
    out_png: str | os.PathLike[str],
    title: str | None = None,
) -> Path:
    """Draw the trellis with β as edge widths (``beta`` ``[L, levels, 3]`` or None) and the path over it."""
    return save_png(figure_network_path(beta, genotype_or_path, title), out_png)


def figure_network_path(
    beta: Any | None, genotype_or_path: Genotype | Sequence[int], title: str | None = None
) -> Figure:
    """The figure of :func:`plot_network_path`: edges have gid ``beta-edge``, the path ``network-path``."""
    path = list(genotype_or_path.network_path if isinstance(genotype_or_path, Genotype) else genotype_or_path)
    num_layers = len(path)
    levels = genotype_or_path.num_levels if isinstance(genotype_or_path, Genotype) else DEFAULT_NUM_LEVELS
    levels = max(levels, max(path) + 1)  # a bare path of a deeper space: draw every level it visits
    if beta is not None:
        beta = np.asarray(beta, dtype=np.float64)
        if beta.ndim != 3 or beta.shape[0] != num_layers or beta.shape[2] != 3:
            raise ValueError(
                f"beta: expected [{num_layers}, levels, 3] for this path, got {list(beta.shape)}"
            )
        levels = beta.shape[1]
    fig = new_figure((max(6.0, 0.62 * num_layers + 2.2), 1.0 + 0.8 * levels))
    ax = fig.add_subplot()
    for layer in range(num_layers):
        for level in range(levels):
            for d in range(3):
                target = level + d - 1
                if not (node_exists(layer, level, levels) and node_exists(layer + 1, target, levels)):
                    continue
                weight = 0.15 if beta is None else float(beta[layer, level, d])
                ax.plot(
                    [layer, layer + 1],
                    [level, target],
                    color=EDGE_COLOR,
                    lw=0.4 + MAX_EDGE_WIDTH * weight,
                    alpha=0.25 + 0.55 * weight,
                    solid_capstyle="round",
                    zorder=1,
                    gid="beta-edge",
                )
    nodes = [(x, y) for x in range(num_layers + 1) for y in range(levels) if node_exists(x, y, levels)]
    ax.scatter(*zip(*nodes, strict=True), s=22, color="#bbbbbb", edgecolor="#555555", lw=0.6, zorder=2)
    xs, ys = list(range(num_layers + 1)), [0, *path]
    ax.plot(xs, ys, color=PATH_COLOR, lw=2.6, zorder=3, gid="network-path")
    ax.scatter(xs, ys, s=46, color=PATH_COLOR, edgecolor="black", lw=0.6, zorder=4)
    ax.set_xticks(range(num_layers + 1), ["stem"] + [str(i) for i in range(1, num_layers + 1)])
    ax.set_yticks(range(levels), [str(output_stride(s)) for s in range(levels)])
    ax.set_xlabel("layer")
    ax.set_ylabel("output stride")
    ax.set_xlim(-0.4, num_layers + 0.4)
    ax.set_ylim(levels - 0.5, -0.5)  # the finest resolution on top, as in the paper
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    handles = [Line2D([], [], color=PATH_COLOR, lw=2.6, marker="o", label="network path")]
    if beta is not None:
        for weight in (0.2, 0.6, 1.0):
            handles.append(
                Line2D([], [], color=EDGE_COLOR, lw=0.4 + MAX_EDGE_WIDTH * weight, label=f"β = {weight:g}")
            )
    legend = {"loc": "upper left", "bbox_to_anchor": (1.01, 1.0), "frameon": False, "fontsize": 8}
    ax.legend(handles=handles, handlelength=2.6, handletextpad=1.0, **legend)  # room for the widest line
    default = "Network-level architecture" + (" (edge width ∝ β)" if beta is not None else "")
    ax.set_title(title or default, fontsize=10)
    return fig


# -- the cell ---------------------------------------------------------------------------------------------
# The cell is drawn in inches as data units (1:1, equal aspect), so that text sizes are known in data units
# and the arc3 curves matplotlib draws between node centres can be recomputed here to place the labels.
COLUMN_GAP, ROW_GAP = 2.3, 1.25
NODE_HALF = (0.42, 0.2)  # half width/height of a node box, inches
LABEL_CHAR, LABEL_PAD, LABEL_HALF_HEIGHT = 0.062, 0.06, 0.12  # op label size, inches (8 pt text)
BENDS = (0.15, -0.15, 0.3, -0.3, 0.45, -0.45)  # arc3 "rad" candidates, gentlest first
LABEL_SPOTS = tuple(sorted(np.linspace(0.15, 0.85, 15).round(3), key=lambda t: abs(t - 0.5)))  # middle first
LABEL_GAP = 0.04  # inches kept clear around a label, from other labels and from other edges
EDGE_SAMPLES = np.linspace(0.0, 1.0, 81)  # points per edge curve when testing what a label covers


def _cell_layout(cell: Sequence[Sequence[tuple[str, int]]]) -> dict[int, np.ndarray]:
    """Node centres: inputs in column 0, a block one column right of its rightmost input, the output last;
    nodes of a column ordered by the mean height of their inputs (fewer crossings)."""
    column, height = {0: 0, 1: 0}, {0: 1.0, 1: -1.0}
    for i, block in enumerate(cell):
        column[i + 2] = 1 + max(column[idx] for _, idx in block)
        height[i + 2] = sum(height[idx] for _, idx in block) / 2
    output = len(cell) + 2
    column[output], height[output] = max(column.values()) + 1, 0.0
    positions = {}
    for col in set(column.values()):
        members = sorted((n for n in column if column[n] == col), key=lambda n: (-height[n], n))
        for row, node in enumerate(members):
            positions[node] = np.array([COLUMN_GAP * col, ROW_GAP * ((len(members) - 1) / 2 - row)])
    return positions


def _arc_point(start: np.ndarray, end: np.ndarray, rad: float, t: float) -> np.ndarray:
    """Point at ``t`` of matplotlib's ``arc3,rad=rad`` curve from ``start`` to ``end`` (equal aspect)."""
    delta = end - start
    control = (start + end) / 2 + rad * np.array([delta[1], -delta[0]])
    return (1 - t) ** 2 * start + 2 * (1 - t) * t * control + t**2 * end


def _inside(point: np.ndarray, centre: np.ndarray, half: tuple[float, float]) -> bool:
    return abs(point[0] - centre[0]) < half[0] and abs(point[1] - centre[1]) < half[1]


def plot_cell(genotype: Genotype, out_png: str | os.PathLike[str], title: str | None = None) -> Path:
    """Draw the cell: inputs, blocks, the concatenated output; edges coloured and labelled by their op."""
    return save_png(figure_cell(genotype, title), out_png)


def figure_cell(genotype: Genotype, title: str | None = None) -> Figure:
    """The figure of :func:`plot_cell`: node boxes have gid ``cell-node``, op labels ``op-label``."""
    positions = _cell_layout(genotype.cell)
    output = genotype.num_blocks + 2
    xs = [p[0] for p in positions.values()]
    ys = [p[1] for p in positions.values()]
    extent = (min(xs) - 0.8, max(xs) + 0.8, min(ys) - 0.6, max(ys) + 0.6)  # inches around the node centres
    fig = new_figure((extent[1] - extent[0], extent[3] - extent[2]))
    ax = fig.add_axes((0.0, 0.0, 1.0, 1.0))
    ax.set_xlim(extent[0], extent[1])
    ax.set_ylim(extent[2], extent[3])
    ax.set_aspect("equal")
    ax.axis("off")
    boxes = {}
    for node, (x, y) in positions.items():
        if node < 2:
            text, face = f"${INPUT_NAMES[node]}$", "#d0e1f2"
        elif node == output:
            text, face = "concat\n$h^{l}$", "#d5ecd4"
        else:
            text, face = f"block {node - 2}", "#fdf1c7"
        box = {"boxstyle": "round,pad=0.35", "fc": face, "ec": "#333333", "lw": 0.8}
        boxes[node] = ax.text(
            x, y, text, ha="center", va="center", fontsize=10, zorder=4, bbox=box, gid="cell-node"
        )
    # All edges are routed first, so that each label can then be put where no other edge runs through it
    # (a label on a crossing reads as belonging to either edge).
    curves: list[tuple[np.ndarray, np.ndarray, float]] = []  # (start, end, rad) of every edge
    for node in range(2, output):  # every block feeds the concatenation
        rad = _least_crossing_bend(positions, node, output, prefer_sign=1)
        _arrow(ax, boxes, node, output, rad, "concat-edge", color="#999999", lw=0.9, linestyle="--")
        curves.append((positions[node], positions[output], rad))
    op_edges: list[tuple[str, int, float]] = []  # (op, curve index, rad)
    for i, block in enumerate(genotype.cell):
        for k, (op, idx) in enumerate(block):
            # The two inputs of a block bow to opposite sides, unless that runs through a node.
            rad = _least_crossing_bend(positions, idx, i + 2, prefer_sign=1 if k == 0 else -1)
            _arrow(ax, boxes, idx, i + 2, rad, "op-edge", color=op_style(op)[1], lw=2.0)
            op_edges.append((op, len(curves), rad))
            curves.append((positions[idx], positions[i + 2], rad))
    samples = [np.array([_arc_point(a, b, r, t) for t in EDGE_SAMPLES]) for a, b, r in curves]
    taken = [(centre, np.array(NODE_HALF)) for centre in positions.values()]
    used_ops: list[str] = []
    for op, index, rad in op_edges:
        name, color = op_style(op)
        half = np.array([LABEL_CHAR * len(name) / 2 + LABEL_PAD, LABEL_HALF_HEIGHT])
        others = np.concatenate([points for j, points in enumerate(samples) if j != index])
        spot = _label_spot(*curves[index][:2], rad, half, taken, others)
        taken.append((spot, half + LABEL_GAP))
        ax.text(
            *spot,
            name,
            fontsize=8,
            ha="center",
            va="center",
            color=color,
            bbox={"boxstyle": "round,pad=0.15", "fc": "white", "ec": color, "lw": 0.6},
            zorder=7,
            gid="op-label",
        )
        if op not in used_ops:
            used_ops.append(op)
    used_ops.sort(key=lambda op: PRIMITIVES.index(op) if op in PRIMITIVES else len(PRIMITIVES))
    legend = [Patch(color=op_style(op)[1], label=op_style(op)[0]) for op in used_ops]
    ax.legend(handles=legend, loc="upper left", bbox_to_anchor=(1.0, 1.0), frameon=False, fontsize=8)
    blocks = f"{genotype.num_blocks} block" + ("s" if genotype.num_blocks != 1 else "")
    ax.set_title(title or f"Cell ({blocks})", fontsize=10)
    return fig


def _least_crossing_bend(positions: dict, source: int, target: int, prefer_sign: int) -> float:
    """The gentlest arc3 bend whose curve passes through the fewest other nodes."""
    others = [c for n, c in positions.items() if n not in (source, target)]
    start, end = positions[source], positions[target]

    def hits(rad: float) -> int:
        points = [_arc_point(start, end, rad, t) for t in np.linspace(0.05, 0.95, 19)]
        return sum(_inside(p, c, NODE_HALF) for p in points for c in others)

    return min((prefer_sign * r for r in BENDS), key=hits)


def _arrow(ax: Any, boxes: dict, source: int, target: int, rad: float, gid: str, **style: Any) -> None:
    """An ``arc3`` arrow between two node boxes, clipped to them; ``style``: color, lw, linestyle."""
    start, end = boxes[source].get_position(), boxes[target].get_position()
    props = {"arrowstyle": "-|>", "connectionstyle": f"arc3,rad={rad}", "mutation_scale": 13, **style}
    props.update(
        patchA=boxes[source].get_bbox_patch(), patchB=boxes[target].get_bbox_patch(), shrinkA=1, shrinkB=1
    )
    # Drawn above the boxes: a box updates its outline when drawn, and the arrow is clipped to that outline.
    ax.annotate("", xy=end, xytext=start, arrowprops=props, zorder=6, gid=gid)


def _label_spot(
    start: np.ndarray, end: np.ndarray, rad: float, half: np.ndarray, taken: list, others: np.ndarray
) -> np.ndarray:
    """The spot along the edge for a label box of ``half`` size: overlapping the ``taken`` boxes least, then
    covering the fewest points of ``others`` (``[N, 2]`` samples of the other edges).

    ``taken`` holds ``(centre, half size)`` of the node boxes and the labels placed so far; ties go to the
    earlier spot of :data:`LABEL_SPOTS` (the middle of the edge first).
    """

    def cost(spot: np.ndarray) -> tuple[float, int]:
        area = 0.0
        for centre, other in taken:
            dx, dy = half + other - np.abs(spot - centre)
            area += max(dx, 0.0) * max(dy, 0.0)
        crossed = int(np.all(np.abs(others - spot) < half + LABEL_GAP, axis=1).sum())
        return round(area, 6), crossed

    spots = [_arc_point(start, end, rad, t) for t in LABEL_SPOTS]
    return min(spots, key=cost)  # min keeps the first of equal costs: the most central clear spot


# -- a whole run directory --------------------------------------------------------------------------------
def render_run(
    run_dir: str | os.PathLike[str],
    out_dir: str | os.PathLike[str] | None = None,
    note: Callable[[str], None] | None = None,
) -> list[Path]:
    """Render every picture the files in ``run_dir`` allow into ``out_dir`` (default ``run_dir/plots``).

    ``genotype.json`` → cell and path (with β from ``arch_params.json`` when present);
    ``arch_history.jsonl`` → α/β evolution; ``metrics.jsonl`` → curves. Returns the written files.
    A history or metrics file that exists but holds nothing to draw (a single torn line, records without
    α/β or numbers) leaves its picture out, and ``note`` is told which and why.
    """
    say = note or (lambda message: None)
    run_dir = Path(run_dir)
    out = Path(out_dir) if out_dir is not None else run_dir / "plots"
    written: list[Path] = []
    metrics_file = run_dir / "metrics.jsonl"
    metrics = read_jsonl(metrics_file)
    if metrics_file.exists() and not curve_series(metrics):
        say(f"note: {metrics_file} holds no complete record with a loss or score; curves.png left out")
    if holds_dints_architecture(run_dir):
        return render_dints_run(run_dir, out, metrics, say)
    if not _holds_autodeeplab_architecture(run_dir):  # another search space's run: its curves only
        return [plot_curves(metrics, out / "curves.png")] if curve_series(metrics) else []
    genotype = Genotype.load(run_dir / "genotype.json") if (run_dir / "genotype.json").exists() else None
    beta = None
    if (run_dir / "arch_params.json").exists():
        alpha, beta, num_blocks = load_arch_params(run_dir / "arch_params.json")
        if genotype is None:
            levels = beta.shape[1]
            genotype = Genotype(viterbi_path(beta), decode_cell(alpha, num_blocks), levels)
        elif beta.shape[0] != genotype.num_layers:
            beta = None  # a genotype from elsewhere: draw its path alone
    # Every input is read and checked before the first picture is written: a broken file is a one-line
    # error naming it, and leaves the pictures of an earlier render as they were.
    history_file = run_dir / "arch_history.jsonl"
    records = [r for r in read_jsonl(history_file) if "alpha" in r and "beta" in r]
    history = arch_history(records, str(history_file)) if records else None
    if history_file.exists() and history is None:
        say(f"note: {history_file} holds no complete record with alpha and beta; arch_history.png left out")
    if genotype is not None:
        written.append(plot_network_path(beta, genotype, out / "network_path.png"))
        written.append(plot_cell(genotype, out / "cell.png"))
    if history is not None:
        written.append(plot_arch_history(history, out / "arch_history.png"))
    if curve_series(metrics):
        written.append(plot_curves(metrics, out / "curves.png"))
    return written


def _holds_autodeeplab_architecture(run_dir: Path) -> bool:
    """Whether the run's architecture files are Auto-DeepLab's (or absent, or unreadable: then the readers
    report them). A search over another space (:mod:`autodeeplab.space.contract`) writes its own documents
    to ``genotype.json`` and ``arch_params.json``; those have none of Auto-DeepLab's keys."""
    keys = {"genotype.json": {"network_path", "cell"}, "arch_params.json": {"primitives", "beta"}}
    for name, expected in keys.items():
        try:
            data = loads_json((run_dir / name).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if isinstance(data, dict) and not expected & set(data):
            return False
    return True
