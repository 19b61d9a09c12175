"""Pictures of a DiNTS search: the topology grid and the decoded network over it, and the architecture
weights over the epochs; and a text summary of a :class:`~autodeeplab.space.dints.arch.DintsArch`."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from autodeeplab.errors import GenotypeError
from autodeeplab.fileio import parse_json_document, read_document
from autodeeplab.runs.rundir import read_jsonl
from autodeeplab.space.dints.arch import DintsArch, is_dints_document
from autodeeplab.space.dints.decode import decode_record
from autodeeplab.viz.common import EDGE_COLOR, new_figure, save_png
from autodeeplab.viz.history import curve_series, plot_curves

OP_COLORS = {
    "skip_connect": "#7f7f7f",
    "conv_3x3": "#d62728",
    "conv_3x3x3": "#d62728",
    "conv_3x3x1": "#1f77b4",
    "conv_3x1x3": "#2ca02c",
    "conv_1x3x3": "#9467bd",
}
MAX_WIDTH = 6.0  # points, for an edge of probability 1


def describe_architecture(arch: Any) -> str:
    """The text summary of any space's architecture (a genotype's or a DiNTS topology's)."""
    if isinstance(arch, DintsArch):
        return describe_dints(arch)
    from autodeeplab.viz.plots import describe_genotype  # plots imports this module

    return describe_genotype(arch)


def describe_dints(arch: DintsArch) -> str:
    """A multi-line summary: per block, its active edges (down ↘, same →, up ↗) and their ops."""
    arrows = {1: "down", 0: "same", -1: "up"}
    lines = [
        f"DiNTS topology: {arch.depths} depths (depth d at 1/2^(d+1) of the input), "
        f"{arch.num_blocks} blocks, op set {arch.op_set}"
    ]
    for b, block in enumerate(arch.blocks):
        edges = ", ".join(f"{a}>{z} {op} ({arrows[z - a]})" for a, z, op in block)
        lines.append(f"  block {b}: {edges}")
    lines.append(f"Short form: {arch.short()}")
    return "\n".join(lines)


def plot_dints_topology(
    arch: DintsArch | None, record: Mapping[str, Any] | None, out_png: str | os.PathLike[str]
) -> Path:
    """Write :func:`figure_dints_topology` to ``out_png``."""
    return save_png(figure_dints_topology(arch, record), out_png)


def figure_dints_topology(arch: DintsArch | None, record: Mapping[str, Any] | None) -> Figure:
    """The grid of nodes (blocks left to right, depth 0 on top) with every candidate edge drawn as wide as its
    probability (``record``: an ``arch_params.json`` object; absent: thin), and the decoded edges over it in
    the colour of their op."""
    if arch is None and record is None:
        raise ValueError("nothing to draw: no architecture and no arch_params record")
    edges = [tuple(e) for e in record["edges"]] if record else None
    probs = np.asarray(record["edge_probabilities"], dtype=float) if record else None
    depths = arch.depths if arch else 1 + max(max(e) for e in edges)
    blocks = arch.num_blocks if arch else probs.shape[0]
    fig = new_figure((1.0 + 0.75 * blocks, 1.2 + 0.7 * depths))
    ax = fig.add_subplot()
    if record is not None:
        for b in range(blocks):
            for i, (a, z) in enumerate(edges):
                width = 0.3 + MAX_WIDTH * float(probs[b, i])
                ax.plot([b, b + 1], [a, z], color=EDGE_COLOR, alpha=0.35, lw=width, solid_capstyle="round")
    used_ops: dict[str, str] = {}
    if arch is not None:
        for b, block in enumerate(arch.blocks):
            for a, z, op in block:
                color = OP_COLORS.get(op, "#000000")
                used_ops[op] = color
                ax.plot([b, b + 1], [a, z], color=color, lw=2.0, gid=f"decoded-{b}-{a}-{z}")
    active = _active_nodes(arch, depths, blocks)
    for b in range(blocks + 1):
        for d in range(depths):
            on = active[b, d]
            ax.plot(b, d, "o", ms=7, mfc="black" if on else "white", mec="black", zorder=3)
    ax.set_xticks(range(blocks + 1), ["stem"] + [str(b) for b in range(blocks)])
    ax.set_yticks(range(depths), [f"depth {d}\n1/{2 ** (d + 1)}" for d in range(depths)])
    ax.set_ylim(depths - 0.5, -0.5)
    ax.set_xlabel("output of block")
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    title = "DiNTS topology"
    if record is not None:
        title += (
            f": edge width = probability; memory {100 * record.get('memory_fraction', float('nan')):.0f}%"
        )
        if "memory_budget" in record:
            title += f" of the full supernet (budget {100 * record['memory_budget']:.0f}%)"
    ax.set_title(title, fontsize=9)
    if used_ops:
        handles = [Line2D([], [], color=c, lw=2, label=op) for op, c in used_ops.items()]
        ax.legend(handles=handles, fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0), frameon=False)
    return fig


def _active_nodes(arch: DintsArch | None, depths: int, blocks: int) -> np.ndarray:
    """``bool [B + 1, D]``: the nodes the decoded network uses (column 0: what block 0 reads)."""
    active = np.zeros((blocks + 1, depths), dtype=bool)
    if arch is None:
        return active
    for b, (reads, writes) in enumerate(arch.node_sets()):
        active[b, sorted(reads)] = True
        active[b + 1, sorted(writes)] = True
    return active


def plot_dints_history(history: Sequence[Mapping[str, Any]], out_png: str | os.PathLike[str]) -> Path:
    """Write :func:`figure_dints_history` to ``out_png``."""
    return save_png(figure_dints_history(history), out_png)


def figure_dints_history(history: Sequence[Mapping[str, Any]]) -> Figure:
    """Over the epochs (``arch_history.jsonl`` records of a DiNTS search): every edge's probability
    (coloured by direction), each op's weight averaged over all edges, and the expected memory against the
    budget."""
    if not history:
        raise ValueError("no DiNTS records to draw")
    epochs = np.array([r["epoch"] for r in history])
    probs = np.array([r["edge_probabilities"] for r in history], dtype=float)  # [T, B, E]
    ops = np.array([r["op_weights"] for r in history], dtype=float)  # [T, B, E, K]
    edges, op_names = history[-1]["edges"], history[-1]["ops"]
    fig = new_figure((10.0, 3.2))
    ax_p, ax_o, ax_m = fig.subplots(1, 3)
    colors = {1: "#1f77b4", 0: "#7f7f7f", -1: "#d62728"}  # by z - a: down, same, up
    names = {1: "down", 0: "same", -1: "up"}
    for b in range(probs.shape[1]):
        for i, (a, z) in enumerate(edges):
            ax_p.plot(epochs, probs[:, b, i], color=colors[z - a], lw=0.7, alpha=0.6)
    ax_p.legend(
        handles=[Line2D([], [], color=c, label=names[k]) for k, c in colors.items()],
        fontsize=7,
        frameon=False,
    )
    ax_p.set(title="edge probabilities", xlabel="epoch", ylim=(0, 1))
    for k, name in enumerate(op_names):
        ax_o.plot(epochs, ops[..., k].mean(axis=(1, 2)), label=name, color=OP_COLORS.get(name, "#000000"))
    ax_o.legend(fontsize=7, frameon=False)
    ax_o.set(title="op weight, mean over edges", xlabel="epoch")
    ax_m.plot(epochs, [r.get("memory_fraction", np.nan) for r in history], color="black", label="expected")
    if "memory_budget" in history[-1]:
        ax_m.axhline(history[-1]["memory_budget"], color="#d62728", ls="--", label="budget")
    ax_m.legend(fontsize=7, frameon=False)
    ax_m.set(title="memory / full supernet", xlabel="epoch", ylim=(0, 1))
    for ax in (ax_p, ax_o, ax_m):
        ax.title.set_fontsize(9)
    fig.subplots_adjust(wspace=0.3)
    return fig


# -- a whole run directory --------------------------------------------------------------------------------
def holds_dints_architecture(run_dir: Path) -> bool:
    """Whether the run is a DiNTS search or training (a ``dints_arch.json``, or DiNTS arch parameters)."""
    return (run_dir / DintsArch.FILE_NAME).exists() or is_dints_document(run_dir / "arch_params.json")


def render_dints_run(run_dir: Path, out: Path, metrics: list, say: Callable[[str], None]) -> list[Path]:
    """A DiNTS run's pictures: ``topology.png`` (the grid, edge widths by probability, the decoded network
    over it), ``arch_history.png`` (probabilities, op weights and memory over the epochs), ``curves.png``."""
    arch_file, params_file = run_dir / DintsArch.FILE_NAME, run_dir / "arch_params.json"
    arch = DintsArch.load(arch_file) if arch_file.exists() else None
    record = None
    if params_file.exists():
        text = read_document(params_file, "arch_params", GenotypeError)
        record = parse_json_document(text, str(params_file), GenotypeError)
        decoded = decode_record(record, str(params_file))  # validates the record before any drawing
        if arch is not None and (arch.depths, arch.num_blocks) != (decoded.depths, decoded.num_blocks):
            raise GenotypeError(
                f"{arch_file}: {arch.depths} depths x {arch.num_blocks} blocks, but {params_file} holds "
                f"{decoded.depths} x {decoded.num_blocks}: files of different searches"
            )
        arch = arch or decoded
    history_file = run_dir / "arch_history.jsonl"
    history = [r for r in read_jsonl(history_file) if r.get("kind") == "dints" and "edge_probabilities" in r]
    if history_file.exists() and not history:
        say(f"note: {history_file} holds no complete DiNTS record; arch_history.png left out")
    written = [plot_dints_topology(arch, record, out / "topology.png")]
    if history:
        try:
            written.append(plot_dints_history(history, out / "arch_history.png"))
        except (ValueError, TypeError, KeyError) as exc:  # records of mixed shapes or missing fields
            say(f"note: {history_file}: records that do not fit together ({exc}); arch_history.png left out")
    if curve_series(metrics):
        written.append(plot_curves(metrics, out / "curves.png"))
    return written
