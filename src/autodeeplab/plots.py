"""Pictures of a search or training run (matplotlib, Agg canvas; no Graphviz, no pyplot state).

- :func:`plot_network_path`: the L × levels trellis (layers on x, output stride 4..32 on y), every edge
  drawn with a width ∝ β and the decoded path over it (paper Fig. 3, left).
- :func:`plot_cell`: the cell as a graph: h^{l-2}, h^{l-1}, the blocks, the concatenated output; edges
  coloured and labelled by their op (Fig. 3, right).
- :func:`plot_arch_history`: α per edge (strongest non-``none`` weight) and β per node over the epochs.
- :func:`plot_curves`: losses, mIoU and learning rate from ``metrics.jsonl``.
- :func:`render_run`: all of these that a run directory allows, into ``run_dir/plots``.
- :func:`describe_genotype`: the text summary printed next to the pictures.

Inputs follow the run directory formats: β ``[L, levels, 3]`` with ``β[l, s, d]`` the weight of the edge
from node ``(l, s)`` to ``(l+1, s+d-1)`` (see :mod:`autodeeplab.topology`), α ``[E, P]`` softmax weights in
``PRIMITIVES`` order with edges block by block. PNGs are written atomically.
"""

from __future__ import annotations

import io
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from matplotlib.ticker import MaxNLocator

from .decode import decode_cell, load_arch_params, viterbi_path
from .fileio import atomic_write_bytes
from .genotype import DEFAULT_NUM_LEVELS, Genotype
from .primitives import PRIMITIVES
from .runs import read_jsonl
from .topology import edge_offset, node_exists, num_edges, output_stride

DPI = 130
PATH_COLOR = "#d62728"
EDGE_COLOR = "#4c72b0"
MAX_EDGE_WIDTH = 7.0  # points, for β = 1
OP_STYLE = {  # primitive -> (display name, colour)
    "none": ("none", "#000000"),
    "max_pool_3x3": ("max pool 3×3", "#8c564b"),
    "avg_pool_3x3": ("avg pool 3×3", "#e377c2"),
    "skip_connect": ("skip", "#2ca02c"),
    "sep_conv_3x3": ("sep 3×3", "#1f77b4"),
    "sep_conv_5x5": ("sep 5×5", "#17becf"),
    "atr_conv_3x3": ("atrous 3×3", "#ff7f0e"),
    "atr_conv_5x5": ("atrous 5×5", "#d62728"),
}
INPUT_NAMES = ("h^{l-2}", "h^{l-1}")


def _figure(size: tuple[float, float]) -> Figure:
    """A figure of ``size`` inches on its own Agg canvas (no pyplot, no global backend change)."""
    fig = Figure(figsize=size, dpi=DPI)
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Figure, out_png: str | os.PathLike[str]) -> Path:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=DPI, bbox_inches="tight")
    atomic_write_bytes(out_png, buffer.getvalue())
    return Path(out_png)


def _op_style(op: str) -> tuple[str, str]:
    return OP_STYLE.get(op, (op, "#000000"))


def _input_name(index: int) -> str:
    return INPUT_NAMES[index] if index < 2 else f"block {index - 2}"


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
        ops = " + ".join(f"{op}({_input_name(idx)})" for op, idx in block)
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
    return _save(figure_network_path(beta, genotype_or_path, title), out_png)


def figure_network_path(
    beta: Any | None, genotype_or_path: Genotype | Sequence[int], title: str | None = None
) -> Figure:
    """The figure of :func:`plot_network_path`: edges have gid ``beta-edge``, the path ``network-path``."""
    path = list(genotype_or_path.network_path if isinstance(genotype_or_path, Genotype) else genotype_or_path)
    num_layers = len(path)
    levels = DEFAULT_NUM_LEVELS
    if beta is not None:
        beta = np.asarray(beta, dtype=np.float64)
        if beta.ndim != 3 or beta.shape[0] != num_layers or beta.shape[2] != 3:
            raise ValueError(
                f"beta: expected [{num_layers}, levels, 3] for this path, got {list(beta.shape)}"
            )
        levels = beta.shape[1]
    fig = _figure((max(6.0, 0.62 * num_layers + 2.2), 1.0 + 0.8 * levels))
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
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False, fontsize=8)
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
LABEL_SPOTS = (0.5, 0.4, 0.6, 0.3, 0.7, 0.22, 0.78)  # where along an edge its label may go


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
    return _save(figure_cell(genotype, title), out_png)


def figure_cell(genotype: Genotype, title: str | None = None) -> Figure:
    """The figure of :func:`plot_cell`: node boxes have gid ``cell-node``, op labels ``op-label``."""
    positions = _cell_layout(genotype.cell)
    output = genotype.num_blocks + 2
    xs = [p[0] for p in positions.values()]
    ys = [p[1] for p in positions.values()]
    extent = (min(xs) - 0.8, max(xs) + 0.8, min(ys) - 0.6, max(ys) + 0.6)  # inches around the node centres
    fig = _figure((extent[1] - extent[0], extent[3] - extent[2]))
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
    for node in range(2, output):  # every block feeds the concatenation
        rad = _least_crossing_bend(positions, node, output, prefer_sign=1)
        _arrow(ax, boxes, node, output, rad, "concat-edge", color="#999999", lw=0.9, linestyle="--")
    taken = [(centre, np.array(NODE_HALF)) for centre in positions.values()]
    used_ops: list[str] = []
    for i, block in enumerate(genotype.cell):
        target = positions[i + 2]
        for k, (op, idx) in enumerate(block):
            start = positions[idx]
            # The two inputs of a block bow to opposite sides, unless that runs through a node.
            rad = _least_crossing_bend(positions, idx, i + 2, prefer_sign=1 if k == 0 else -1)
            name, color = _op_style(op)
            _arrow(ax, boxes, idx, i + 2, rad, "op-edge", color=color, lw=2.0)
            half = np.array([LABEL_CHAR * len(name) / 2 + LABEL_PAD, LABEL_HALF_HEIGHT])
            spot = _label_spot(start, target, rad, half, taken)
            taken.append((spot, half))
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
    legend = [Patch(color=_op_style(op)[1], label=_op_style(op)[0]) for op in used_ops]
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


def _label_spot(start: np.ndarray, end: np.ndarray, rad: float, half: np.ndarray, taken: list) -> np.ndarray:
    """The spot along the edge where a label box of ``half`` size overlaps the ``taken`` boxes least.

    ``taken`` holds ``(centre, half size)`` of the node boxes and the labels placed so far; the first spot
    without any overlap wins, in the order of :data:`LABEL_SPOTS` (the middle of the edge first).
    """

    def overlap(spot: np.ndarray) -> float:
        area = 0.0
        for centre, other in taken:
            dx, dy = half + other - np.abs(spot - centre)
            area += max(dx, 0.0) * max(dy, 0.0)
        return area

    spots = [_arc_point(start, end, rad, t) for t in LABEL_SPOTS]
    return min(spots, key=overlap)  # min keeps the first of equal values: the most central clear spot


# -- how α and β evolved ----------------------------------------------------------------------------------
def _edge_names(num_blocks: int) -> list[str]:
    def name(i: int) -> str:
        return f"${INPUT_NAMES[i]}$" if i < 2 else f"block {i - 2}"

    return [f"block {b} ← {name(i)}" for b in range(num_blocks) for i in range(b + 2)]


def _beta_nodes(num_layers: int, levels: int) -> list[tuple[int, int]]:
    """Nodes ``(layer, level)`` that have outgoing edges, i.e. the rows of β that mean something."""
    return [
        (layer, level)
        for layer in range(num_layers)
        for level in range(levels)
        if node_exists(layer, level, levels)
    ]


def plot_arch_history(history: Sequence[Mapping[str, Any]], out_png: str | os.PathLike[str]) -> Path:
    """α and β over the epochs from ``arch_history.jsonl`` records (see :func:`figure_arch_history`)."""
    return _save(figure_arch_history(history), out_png)


def figure_arch_history(history: Sequence[Mapping[str, Any]]) -> Figure:
    """α and β over the epochs from ``arch_history.jsonl`` records ``{"epoch", "alpha", "beta"}``.

    ``alpha`` is ``[E, P]`` and ``beta`` ``[L, levels, 3]`` per record, as in ``arch_params.json``.

    Left: per edge, the weight of its strongest non-``none`` op (the edge strength used in decoding), with
    the op the last epoch would pick; the edges that the last epoch keeps are in bold. Right: per node, the
    three outgoing β weights as a colour (red = towards the finer level, green = same level, blue = towards
    the coarser level); the nodes of the last epoch's decoded path are in bold.
    """
    records = [r for r in history if "alpha" in r and "beta" in r]
    if not records:
        raise ValueError("arch history: no records with alpha and beta")
    primitives = records[-1].get("primitives", PRIMITIVES)
    epochs = [r.get("epoch", i) for i, r in enumerate(records)]
    alpha = np.array([r["alpha"] for r in records], dtype=np.float64)  # [T, E, P]
    beta = np.array([r["beta"] for r in records], dtype=np.float64)  # [T, L, levels, 3]
    keep = [j for j, name in enumerate(primitives) if name != "none"]
    num_blocks = next((b for b in range(1, 64) if num_edges(b) == alpha.shape[1]), None)
    if num_blocks is None:
        raise ValueError(f"arch history: {alpha.shape[1]} alpha rows is not B(B+3)/2 for any block count B")
    strength = alpha[:, :, keep].max(axis=2).T  # [E, T]
    final_ops = [primitives[keep[int(j)]] for j in alpha[-1][:, keep].argmax(axis=1)]
    chosen = {
        edge_offset(b) + idx
        for b, block in enumerate(decode_cell(alpha[-1], num_blocks, primitives))
        for _, idx in block
    }
    _, num_layers, levels, _ = beta.shape
    nodes = _beta_nodes(num_layers, levels)
    colours = np.stack([beta[:, layer, level, :] for layer, level in nodes])  # [nodes, T, 3] as RGB
    path = viterbi_path(beta[-1])
    on_path = {(0, 0)} | {(layer + 1, level) for layer, level in enumerate(path[:-1])}

    rows = max(len(strength), len(nodes))
    heatmap_width = min(0.35 * len(epochs), 5.0) + 1.0  # inches; the tick labels need about 1.8 more each
    fig = _figure((2 * heatmap_width + 6.5, 0.19 * rows + 1.8))
    ax_a, ax_b = fig.subplots(1, 2, gridspec_kw={"wspace": 0.75})
    extent = (min(epochs) - 0.5, max(epochs) + 0.5)
    image = ax_a.imshow(
        strength,
        aspect="auto",
        cmap="viridis",
        vmin=0,
        vmax=1,
        interpolation="nearest",
        extent=(*extent, len(strength) - 0.5, -0.5),
    )
    names = _edge_names(num_blocks)
    ax_a.set_yticks(range(len(strength)), names, fontsize=7)
    right = ax_a.secondary_yaxis("right")
    right.set_yticks(range(len(strength)), [_op_style(op)[0] for op in final_ops], fontsize=7)
    for edge in chosen:
        ax_a.get_yticklabels()[edge].set_fontweight("bold")
        right.get_yticklabels()[edge].set_fontweight("bold")
    ax_a.set_xlabel("epoch")
    ax_a.set_title(
        "α: strongest non-none op weight per edge\n(right: op chosen now; bold: edges kept)", fontsize=9
    )
    # pad is a fraction of the axes height: keep about 0.6 inch for the epoch ticks and label.
    fig.colorbar(image, ax=ax_a, location="bottom", fraction=0.025, pad=0.6 / (0.19 * rows), aspect=30)
    ax_b.imshow(colours, aspect="auto", interpolation="nearest", extent=(*extent, len(nodes) - 0.5, -0.5))
    ax_b.set_yticks(range(len(nodes)), [f"layer {l}, OS {output_stride(s)}" for l, s in nodes], fontsize=7)
    for row, node in enumerate(nodes):
        if node in on_path:
            ax_b.get_yticklabels()[row].set_fontweight("bold")
    ax_b.set_xlabel("epoch")
    ax_b.set_title("β: outgoing weights per node (bold: on the decoded path)", fontsize=9)
    legend = [
        Patch(color=(1, 0, 0), label="→ finer (OS ÷ 2)"),
        Patch(color=(0, 1, 0), label="→ same OS"),
        Patch(color=(0, 0, 1), label="→ coarser (OS × 2)"),
    ]
    ax_b.legend(handles=legend, loc="upper left", bbox_to_anchor=(1.02, 1.0), frameon=False, fontsize=7)
    for ax in (ax_a, ax_b):
        ax.set_xticks(
            epochs if len(epochs) <= 12 else np.linspace(min(epochs), max(epochs), 6).round().astype(int)
        )
    return fig


# -- training curves --------------------------------------------------------------------------------------
def _series(metrics: Sequence[Mapping[str, Any]]) -> dict[str, dict[str, tuple[str, list, list]]]:
    """``panel -> label -> (x name, xs, ys)``: losses, mIoU and learning rate from metrics records."""
    panels: dict[str, dict[str, tuple[str, list, list]]] = {"loss": {}, "mIoU": {}, "learning rate": {}}
    for index, record in enumerate(metrics):
        x_name = "step" if "step" in record else "epoch" if "epoch" in record else "record"
        x = record.get(x_name, index)
        prefix = " ".join(str(record[k]) for k in ("phase", "split") if isinstance(record.get(k), str))
        for key, value in record.items():
            if not isinstance(value, (int, float)) or isinstance(value, bool):
                continue
            if key == "loss" or key.endswith("_loss"):
                panel = "loss"
            elif "miou" in key.lower():
                panel = "mIoU"
            elif key == "lr" or key.endswith("_lr"):
                panel = "learning rate"
            else:
                continue
            label = f"{prefix} {key}".strip()
            _, xs, ys = panels[panel].setdefault(label, (x_name, [], []))
            xs.append(x)
            ys.append(value)
    return {name: series for name, series in panels.items() if series}


def plot_curves(metrics: Sequence[Mapping[str, Any]], out_png: str | os.PathLike[str]) -> Path:
    """Losses, mIoU and learning rate from ``metrics.jsonl`` records, one panel each, over step or epoch."""
    return _save(figure_curves(metrics), out_png)


def figure_curves(metrics: Sequence[Mapping[str, Any]]) -> Figure:
    """The figure of :func:`plot_curves`; one axes per panel, titled ``loss``, ``mIoU``, ``learning rate``."""
    panels = _series(metrics)
    if not panels:
        raise ValueError("metrics: no loss, mIoU or learning-rate values to plot")
    fig = _figure((4.2 * len(panels) + 0.6, 3.4))
    axes = np.atleast_1d(fig.subplots(1, len(panels), gridspec_kw={"wspace": 0.35}))
    for ax, (name, series) in zip(axes, panels.items(), strict=True):
        for label, (x_name, xs, ys) in series.items():
            marker = "o" if len(xs) <= 30 else None
            ax.plot(xs, ys, marker=marker, ms=3, lw=1.4, label=label)
            ax.set_xlabel(x_name)
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        if name == "learning rate" and all(y > 0 for s in series.values() for y in s[2]):
            ax.set_yscale("log")
        ax.set_title(name, fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, frameon=False)
    return fig


# -- a whole run directory --------------------------------------------------------------------------------
def render_run(run_dir: str | os.PathLike[str], out_dir: str | os.PathLike[str] | None = None) -> list[Path]:
    """Render every picture the files in ``run_dir`` allow into ``out_dir`` (default ``run_dir/plots``).

    ``genotype.json`` → cell and path (with β from ``arch_params.json`` when present);
    ``arch_history.jsonl`` → α/β evolution; ``metrics.jsonl`` → curves. Returns the written files.
    """
    run_dir = Path(run_dir)
    out = Path(out_dir) if out_dir is not None else run_dir / "plots"
    written: list[Path] = []
    genotype = Genotype.load(run_dir / "genotype.json") if (run_dir / "genotype.json").exists() else None
    beta = None
    if (run_dir / "arch_params.json").exists():
        alpha, beta, num_blocks = load_arch_params(run_dir / "arch_params.json")
        if genotype is None:
            genotype = Genotype(network_path=viterbi_path(beta), cell=decode_cell(alpha, num_blocks))
        elif beta.shape[0] != genotype.num_layers:
            beta = None  # a genotype from elsewhere: draw its path alone
    if genotype is not None:
        written.append(plot_network_path(beta, genotype, out / "network_path.png"))
        written.append(plot_cell(genotype, out / "cell.png"))
    history = [r for r in read_jsonl(run_dir / "arch_history.jsonl") if "alpha" in r and "beta" in r]
    if history:
        written.append(plot_arch_history(history, out / "arch_history.png"))
    metrics = read_jsonl(run_dir / "metrics.jsonl")
    if _series(metrics):
        written.append(plot_curves(metrics, out / "curves.png"))
    return written
