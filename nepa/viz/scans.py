"""Drawing scan orders: the path through cell centres, for ``nepa scans show --png`` and
``--order all``."""

from __future__ import annotations

from os import PathLike
from typing import TYPE_CHECKING

import numpy as np

from nepa.encoders.scans import Grid, validate_grid

if TYPE_CHECKING:
    from matplotlib.axes import Axes


def _panel_xy(order: np.ndarray, grid: Grid) -> tuple[np.ndarray, np.ndarray, np.ndarray, Grid]:
    """Cell-centre ``x, y`` and frame ``f`` of each step, each ``(T,)``, and ``(frames, H, W)``.

    3-D frames are laid out side by side with one empty column between them.
    """
    t, h, w = (1, 1, *grid)[-3:]
    f, r, c = np.unravel_index(np.asarray(order), (t, h, w))
    return f * (w + 1) + c, r, f, (t, h, w)


def draw_path_png(
    order: np.ndarray, grid: Grid, path: str | PathLike[str], title: str | None = None
) -> None:
    """Draw the scan as a polyline through cell centres (start ``o``, end ``s``) to a PNG.

    Cells are a light grid, the y axis points down as in an image; 3-D frames sit side by side.
    """
    # Imported here so that importing nepa.viz never pays for matplotlib; the Agg canvas
    # renders off-screen without touching pyplot's global backend state.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    grid = validate_grid(grid)
    t, h, w = (1, 1, *grid)[-3:]
    total_w = t * (w + 1) - 1
    scale = min(0.5, 10.0 / max(total_w, h))  # inches per cell, capped for large grids
    fig = Figure(figsize=(max(2.5, total_w * scale + 0.6), max(2.0, h * scale + 0.8)))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    draw_path(ax, order, grid, title)
    ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize="small", frameon=False)
    fig.savefig(path, format="png", dpi=100, bbox_inches="tight")


def draw_path(ax: Axes, order: np.ndarray, grid: Grid, title: str | None = None) -> None:
    """Draw the scan on one matplotlib ``ax``: light cell grid, the path through cell centres,
    start (green ``o``, label "start") and end (red ``s``, label "end"); y points down."""
    grid = validate_grid(grid)
    x, y, f, (t, h, w) = _panel_xy(order, grid)
    total_w = t * (w + 1) - 1
    for k in range(t):
        x0 = k * (w + 1) - 0.5
        ax.vlines(x0 + np.arange(w + 1), -0.5, h - 0.5, color="0.85", lw=0.8)
        ax.hlines(np.arange(h + 1) - 0.5, x0, x0 + w, color="0.85", lw=0.8)
    # Steps that change frame would cut across panels: break the line there (NaN) and draw
    # those steps faint and dotted instead.
    jump = np.flatnonzero(f[1:] != f[:-1])  # step i -> i+1 changes frame
    xs, ys = (
        np.insert(x.astype(float), jump + 1, np.nan),
        np.insert(y.astype(float), jump + 1, np.nan),
    )
    ax.plot(xs, ys, "-", color="tab:blue", lw=1.5, zorder=2)
    for i in jump:
        ax.plot(x[i : i + 2], y[i : i + 2], ":", color="0.6", lw=0.8, zorder=1)
    ax.plot(x[:1], y[:1], "o", color="tab:green", ms=8, zorder=3, label="start")
    ax.plot(x[-1:], y[-1:], "s", color="tab:red", ms=8, zorder=3, label="end")
    ax.set_xlim(-0.6, total_w - 0.4)
    ax.set_ylim(h - 0.4, -0.6)  # inverted: row 0 at the top, like an image
    ax.set_aspect("equal")
    ax.set_axis_off()
    if title:
        ax.set_title(title)
