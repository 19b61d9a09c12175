"""Pictures of a run over time: how α and β evolved (``arch_history.jsonl``) and the training curves
(``metrics.jsonl``).

- :func:`figure_arch_history`: small multiples. Top, one line chart per cell edge (rows = blocks, columns =
  inputs), a line per primitive; bottom, one chart per trellis node (columns = layers, rows = output
  strides), a line per outgoing β edge. Charts of a kind share a y-range fitted to the data, so that small
  changes near the uniform 1/P start are visible and charts can still be compared by eye.
- :func:`figure_curves`: losses, mIoU and learning rate.

Sizes (blocks, primitives, layers, levels) are read from the history, nothing is assumed.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure, SubFigure
from matplotlib.lines import Line2D
from matplotlib.ticker import MaxNLocator

from autodeeplab.errors import GenotypeError
from autodeeplab.ops.primitives import PRIMITIVES
from autodeeplab.space.autodeeplab.decode import (
    ARCH_PARAMS_VERSION,
    decode_cell,
    validate_arch_params,
    viterbi_path,
)
from autodeeplab.space.autodeeplab.topology import (
    beta_mask,
    edge_offset,
    node_exists,
    output_stride,
)
from autodeeplab.viz.common import PATH_COLOR, input_name, new_figure, op_style, save_png

# Sizes in inches. A grid cell holds a chart and the gap to the next row (α charts have 2-line titles).
ALPHA_CHART = (1.75, 1.05)
BETA_CHART = (1.15, 0.85)
LEFT, RIGHT, BOTTOM = 0.65, 0.15, 0.35  # margins: y ticks and labels; right edge; epoch tick labels
MIN_WIDTH = 6.8  # the section titles (about 6.2 inches at 9 pt) fit even when the grids are narrow
TITLE_LINE, LEGEND_ROW, CHART_TITLE_LINE, HEADER_PAD = 0.2, 0.17, 0.13, 0.15
ALPHA_LEGEND_ENTRY, BETA_LEGEND_ENTRY = 1.4, 2.0  # width of one legend entry (line and text, 7 pt)
MARKER_EPOCHS = 15  # up to this many epochs the points are marked (a single epoch is only a marker)
Y_MARGIN = 0.08  # of the data range, above and below
X_MARGIN = 0.03  # of the epoch range, left and right
MIN_Y_SPAN = 0.01  # weights that barely move still get a readable range around them
DASHED_OPS = ("sep_conv_5x5", "atr_conv_5x5")  # told apart from their 3×3 siblings by dash, not only hue
# β's last axis: d = 0 towards the finer level (output stride ÷ 2), 1 the same, 2 the coarser (× 2).
BETA_DIRECTIONS = (
    ("→ finer (OS ÷ 2)", "#0072b2"),
    ("→ same OS", "#009e73"),
    ("→ coarser (OS × 2)", "#e69f00"),
)


@dataclass(frozen=True)
class ArchHistory:
    """The records of ``arch_history.jsonl`` as arrays.

    ``epochs`` ``[T]``; ``alpha`` ``[T, E, P]`` softmax weights; ``beta`` ``[T, L, levels, 3]``.
    """

    epochs: np.ndarray
    alpha: np.ndarray
    beta: np.ndarray
    primitives: tuple[str, ...]
    num_blocks: int


def arch_history(history: Sequence[Mapping[str, Any]], source: str = "arch history") -> ArchHistory:
    """Validate and stack the records that hold ``alpha`` and ``beta`` (others are skipped).

    Raises :class:`GenotypeError` naming ``source`` and the record when one is malformed or its shape
    differs from the first (a history mixing two search spaces).
    """
    records = [r for r in history if "alpha" in r and "beta" in r]
    if not records:
        raise GenotypeError(f"{source}: no records with alpha and beta")
    alphas, betas, epochs, blocks = [], [], [], None
    for i, record in enumerate(records):
        where = f"{source}: record {i + 1}"
        fields = {
            "version": record.get("version", ARCH_PARAMS_VERSION),
            "primitives": record.get("primitives", list(PRIMITIVES)),
            "alpha": record["alpha"],
            "beta": record["beta"],
        }
        alpha, beta, blocks = validate_arch_params(fields, where)
        if alphas and (alpha.shape != alphas[0].shape or beta.shape != betas[0].shape):
            raise GenotypeError(
                f"{where}: alpha {list(alpha.shape)} / beta {list(beta.shape)} differ from the first "
                f"record's {list(alphas[0].shape)} / {list(betas[0].shape)}"
            )
        alphas.append(alpha)
        betas.append(beta)
        epochs.append(record.get("epoch", i + 1))
    return ArchHistory(np.asarray(epochs), np.stack(alphas), np.stack(betas), tuple(PRIMITIVES), int(blocks))


def plot_arch_history(
    history: Sequence[Mapping[str, Any]] | ArchHistory, out_png: str | os.PathLike[str]
) -> Path:
    """α and β over the epochs from ``arch_history.jsonl`` records (see :func:`figure_arch_history`)."""
    return save_png(figure_arch_history(history), out_png)


def figure_arch_history(history: Sequence[Mapping[str, Any]] | ArchHistory) -> Figure:
    """α per cell edge and β per trellis node over the epochs, from records ``{"epoch", "alpha", "beta"}``.

    Axes have gid ``alpha-edge`` (one per edge, in α's row order) and ``beta-node`` (one per node with
    outgoing edges, layer by layer, finest level first); their lines have gid ``alpha-line`` / ``beta-line``.
    The edges the last epoch's decoding keeps, and the nodes of its decoded path, are framed.
    """
    h = history if isinstance(history, ArchHistory) else arch_history(history)
    _, num_layers, levels, _ = h.beta.shape
    grids = ((h.num_blocks + 1) * ALPHA_CHART[0], num_layers * BETA_CHART[0])
    width = max(MIN_WIDTH, LEFT + max(grids) + RIGHT)
    alpha = _Section(
        h.num_blocks, h.num_blocks + 1, ALPHA_CHART, 2, len(h.primitives) + 1, ALPHA_LEGEND_ENTRY, 2
    )
    beta = _Section(levels, num_layers, BETA_CHART, 1, len(BETA_DIRECTIONS) + 2, BETA_LEGEND_ENTRY, 1)
    heights = [alpha.height(width), beta.height(width)]
    fig = new_figure((width, sum(heights)))
    top, bottom = fig.subfigures(2, 1, height_ratios=heights)
    _draw_alpha(top, h, alpha, (width, heights[0]))
    _draw_beta(bottom, h, beta, (width, heights[1]))
    return fig


@dataclass(frozen=True)
class _Section:
    """The inch layout of one half of the history figure: a title, a legend, then a grid of charts."""

    rows: int
    cols: int
    chart: tuple[float, float]
    title_lines: int
    legend_entries: int
    legend_entry_width: float
    chart_title_lines: int

    def legend_cols(self, width: float) -> int:
        fit = int((width - LEFT - RIGHT) // self.legend_entry_width)
        return min(max(fit, 1), self.legend_entries)

    def header(self, width: float) -> float:
        legend_rows = -(-self.legend_entries // self.legend_cols(width))
        lines = self.title_lines * TITLE_LINE + legend_rows * LEGEND_ROW
        return lines + self.chart_title_lines * CHART_TITLE_LINE + HEADER_PAD

    def height(self, width: float) -> float:
        return self.header(width) + self.rows * self.chart[1] + BOTTOM

    def grid(self, fig: SubFigure, size: tuple[float, float], hspace: float) -> Any:
        """The gridspec of the charts, left-aligned at their natural size under the header."""
        width, height = size
        return fig.add_gridspec(
            self.rows,
            self.cols,
            left=LEFT / width,
            right=(LEFT + self.cols * self.chart[0]) / width,
            top=1 - self.header(width) / height,
            bottom=BOTTOM / height,
            hspace=hspace,
        )

    def decorate(self, fig: SubFigure, size: tuple[float, float], title: str, handles: list) -> None:
        """The section title at the top left, the legend under it."""
        width, height = size
        fig.suptitle(title, fontsize=9, x=LEFT / width, y=1 - 0.05 / height, ha="left", va="top")
        below_title = 1 - (0.08 + self.title_lines * TITLE_LINE) / height
        fig.legend(
            handles=handles,
            loc="upper left",
            bbox_to_anchor=(LEFT / width, below_title),
            ncols=self.legend_cols(width),
            fontsize=7,
            frameon=False,
            borderaxespad=0.0,
            borderpad=0.0,
        )


def fitted_limits(values: np.ndarray) -> tuple[float, float]:
    """A y-range around ``values`` with a margin, at least :data:`MIN_Y_SPAN` wide, clipped to [0, 1]."""
    lo, hi = float(np.min(values)), float(np.max(values))
    centre, span = (lo + hi) / 2, max(hi - lo, MIN_Y_SPAN)
    lo, hi = centre - span / 2 - Y_MARGIN * span, centre + span / 2 + Y_MARGIN * span
    return max(lo, 0.0), min(hi, 1.0)


def _style_time_axis(ax: Any, epochs: np.ndarray, show_labels: bool) -> None:
    """Integer epoch ticks; a single epoch gets room on both sides."""
    if len(epochs) == 1:
        ax.set_xlim(epochs[0] - 1, epochs[0] + 1)
        ax.set_xticks([epochs[0]])
    else:
        pad = X_MARGIN * (epochs.max() - epochs.min())  # end markers are not cut in half by the frame
        ax.set_xlim(epochs.min() - pad, epochs.max() + pad)
        ax.xaxis.set_major_locator(MaxNLocator(nbins=4, integer=True))
    ax.tick_params(labelsize=6, length=2, pad=1, labelbottom=show_labels)
    ax.grid(alpha=0.25, lw=0.5)


def _frame(ax: Any, color: str) -> None:
    for spine in ax.spines.values():
        spine.set_edgecolor(color)
        spine.set_linewidth(1.8)


def _draw_alpha(fig: SubFigure, h: ArchHistory, section: _Section, size: tuple[float, float]) -> None:
    """One chart per edge: row = the block it feeds, column = its input; a line per primitive."""
    blocks, (epochs, primitives) = h.num_blocks, (h.epochs, h.primitives)
    marker = "o" if len(epochs) <= MARKER_EPOCHS else None
    limits = fitted_limits(h.alpha)
    uniform = 1.0 / len(primitives)
    final = h.alpha[-1]
    kept = {
        edge_offset(b) + idx
        for b, block in enumerate(decode_cell(final, blocks, primitives))
        for _, idx in block
    }
    grid = section.grid(fig, size, hspace=0.75)
    first = None
    for block in range(blocks):
        for idx in range(block + 2):
            edge = edge_offset(block) + idx
            ax = fig.add_subplot(grid[block, idx], sharex=first, sharey=first)
            first = first or ax
            ax.set_gid("alpha-edge")
            ax.axhline(uniform, color="#888888", lw=0.6, ls=":", zorder=1)
            for p, op in enumerate(primitives):
                name, color = op_style(op)
                ax.plot(epochs, h.alpha[:, edge, p], color=color, ls=_dash(op), lw=1.1, marker=marker, ms=2.5,
                        label=name, gid="alpha-line")  # fmt: skip
            ax.set_ylim(*limits)
            _style_time_axis(ax, epochs, show_labels=block == blocks - 1)
            ax.tick_params(labelleft=idx == 0)
            if idx == 0:
                ax.set_ylabel(f"block {block}", fontsize=7)
            # The op decoding would pick now (strongest non-none), named under the edge in its colour.
            strongest = max(
                (p for p, op in enumerate(primitives) if op != "none"), key=lambda p: final[edge, p]
            )
            name, color = op_style(primitives[strongest])
            status = "kept: " if edge in kept else "dropped, best: "
            title = f"{input_name(idx, math=True)} → block {block}\n{status}{name}"
            ax.set_title(title, fontsize=7, pad=2, color=color if edge in kept else "#444444",
                         fontweight="bold" if edge in kept else "normal")  # fmt: skip
            if edge in kept:
                _frame(ax, color)
    handles = [
        Line2D([], [], color=op_style(op)[1], lw=1.4, ls=_dash(op), label=op_style(op)[0])
        for op in primitives
    ]
    handles.append(Line2D([], [], color="#888888", lw=0.8, ls=":", label=f"uniform 1/{len(primitives)}"))
    title = (
        f"α: weight of each primitive on each cell edge, {_epochs_text(epochs)}\n"
        "framed: the edges the last epoch's decoding keeps, with the op it picks; the others are dropped"
    )
    section.decorate(fig, size, title, handles)


def _draw_beta(fig: SubFigure, h: ArchHistory, section: _Section, size: tuple[float, float]) -> None:
    """One chart per trellis node with outgoing edges: column = layer, row = level; a line per edge."""
    epochs, beta = h.epochs, h.beta
    _, num_layers, levels, _ = beta.shape
    marker = "o" if len(epochs) <= MARKER_EPOCHS else None
    exists = beta_mask(num_layers, levels)  # [L, levels, 3]: the β entries that are edges
    limits = fitted_limits(beta[:, exists])
    path = (0, *viterbi_path(beta[-1]))  # levels of layers 0 (stem) .. L
    grid = section.grid(fig, size, hspace=0.35)
    first = None
    for layer in range(num_layers):
        for level in range(levels):
            if not node_exists(layer, level, levels):
                continue
            ax = fig.add_subplot(grid[level, layer], sharex=first, sharey=first)
            first = first or ax
            ax.set_gid("beta-node")
            on_path = path[layer] == level
            taken = path[layer + 1] - level + 1 if on_path else None
            for d, (label, color) in enumerate(BETA_DIRECTIONS):
                if exists[layer, level, d]:
                    ax.plot(
                        epochs, beta[:, layer, level, d], color=color, lw=2.4 if d == taken else 1.1,
                        marker=marker, ms=4.5 if d == taken else 2.5, label=label, gid="beta-line",
                    )  # fmt: skip
            ax.set_ylim(*limits)
            lowest = level == min(layer, levels - 1)  # the bottom chart of this column shows the epochs
            _style_time_axis(ax, epochs, show_labels=lowest)
            # Row ``level`` starts at layer ``level`` (one step goes down one level at most): its y labels.
            ax.tick_params(labelleft=level == layer)
            if level == layer:
                ax.set_ylabel(f"OS {output_stride(level)}", fontsize=7)
            if level == 0:
                ax.set_title("stem" if layer == 0 else f"layer {layer}", fontsize=7, pad=2)
            if on_path:
                _frame(ax, PATH_COLOR)
    handles = [Line2D([], [], color=c, lw=1.4, label=label) for label, c in BETA_DIRECTIONS]
    handles.append(Line2D([], [], color="#555555", lw=2.4, label="edge the decoded path takes"))
    handles.append(Line2D([], [], color=PATH_COLOR, lw=1.8, label="red frame: node on the path"))
    title = f"β: weight of each outgoing edge of each trellis node (layer → next), {_epochs_text(epochs)}"
    section.decorate(fig, size, title, handles)


def _dash(op: str) -> str:
    """Line style of a primitive: 5×5 convolutions dashed, ``none`` (never chosen) dotted."""
    return "--" if op in DASHED_OPS else ":" if op == "none" else "-"


def _epochs_text(epochs: np.ndarray) -> str:
    return f"epoch {epochs[0]}" if len(epochs) == 1 else f"epochs {epochs[0]}–{epochs[-1]}"


# -- training curves --------------------------------------------------------------------------------------
def curve_series(metrics: Sequence[Mapping[str, Any]]) -> dict[str, dict[str, tuple[str, list, list]]]:
    """``panel -> label -> (x name, xs, ys)``: losses, mIoU (images), Dice (volumes) and learning rate from
    metrics records."""
    panels: dict[str, dict[str, tuple[str, list, list]]] = {
        "loss": {},
        "mIoU": {},
        "Dice": {},
        "learning rate": {},
    }
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
            elif "dice" in key.lower():
                panel = "Dice"
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
    return save_png(figure_curves(metrics), out_png)


def figure_curves(metrics: Sequence[Mapping[str, Any]]) -> Figure:
    """The figure of :func:`plot_curves`; one axes per panel, titled ``loss``, ``mIoU``, ``learning rate``."""
    panels = curve_series(metrics)
    if not panels:
        raise ValueError("metrics: no loss, mIoU or learning-rate values to plot")
    fig = new_figure((4.2 * len(panels) + 0.6, 3.4))
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
