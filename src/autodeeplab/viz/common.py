"""What every picture shares: the Agg figure factory, the atomic PNG writer and the colours of ops and paths.

Split from :mod:`autodeeplab.viz.plots` so that the architecture pictures (:mod:`autodeeplab.viz.plots`)
and the
curves over time (:mod:`autodeeplab.viz.history`) can both use it without importing each other.
"""

from __future__ import annotations

import io
import os
from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from autodeeplab.fileio import atomic_write_bytes
from autodeeplab.outputs import SOFTWARE

DPI = 130
PATH_COLOR = "#d62728"
EDGE_COLOR = "#4c72b0"
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


def new_figure(size: tuple[float, float]) -> Figure:
    """A figure of ``size`` inches on its own Agg canvas (no pyplot, no global backend change)."""
    fig = Figure(figsize=size, dpi=DPI)
    FigureCanvasAgg(fig)
    return fig


def save_png(fig: Figure, out_png: str | os.PathLike[str]) -> Path:
    """Render ``fig`` to PNG in memory, then write it atomically (a reader never sees half a file)."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=DPI, bbox_inches="tight", metadata={"Software": SOFTWARE})
    atomic_write_bytes(out_png, buffer.getvalue())
    return Path(out_png)


def op_style(op: str) -> tuple[str, str]:
    """``(display name, colour)`` of a primitive; unknown names are drawn in black under their own name."""
    return OP_STYLE.get(op, (op, "#000000"))


def input_name(index: int, math: bool = False) -> str:
    """Name of cell state ``index`` (0 = h^{l-2}, 1 = h^{l-1}, 2+k = block k); ``math`` wraps h in $…$."""
    if index < 2:
        return f"${INPUT_NAMES[index]}$" if math else INPUT_NAMES[index]
    return f"block {index - 2}"
