"""Figure builders (matplotlib Agg canvases, no pyplot state): attention and similarity maps
over an image, and every registered scan order side by side."""

from __future__ import annotations

import math
from os import PathLike

import matplotlib as mpl
import torch
import torch.nn.functional as F
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from nepa.encoders.scans import SCANS, scan_order
from nepa.viz.attention import AttentionMaps
from nepa.viz.grid import Cell
from nepa.viz.image_input import ImageInput
from nepa.viz.scans import draw_path
from nepa.viz.similarity import SimilarityMaps

PANEL = 2.4  # inches per panel
_ATTN_CMAP = mpl.colormaps["viridis"].with_extremes(bad="0.8")  # grey: key hidden by the mask
_SIM_CMAP = mpl.colormaps["RdBu_r"]


def save_png(fig: Figure, path: str | PathLike[str]) -> None:
    fig.savefig(path, format="png", dpi=100, bbox_inches="tight")


def _figure(rows: int, cols: int) -> tuple[Figure, list[list[Axes]]]:
    fig = Figure(figsize=(cols * PANEL + 1.2, rows * PANEL + 0.6), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(rows, cols, squeeze=False)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    return fig, axes.tolist()


def _mark(ax: Axes, cell: Cell, size_hw: tuple[float, float], color: str = "red") -> None:
    """Outline ``cell`` of a grid whose cells are ``size_hw`` display units."""
    (r, c), (h, w) = cell, size_hw
    ax.add_patch(Rectangle((c * w - 0.5, r * h - 0.5), w, h, fill=False, ec=color, lw=2))


def _upsample(map_HW: torch.Tensor, size_hw: tuple[int, int]) -> torch.Tensor:
    """Grid map -> image size (bilinear; hidden cells count as 0)."""
    m = torch.nan_to_num(map_HW.float(), nan=0.0)[None, None]
    return F.interpolate(m, size=size_hw, mode="bilinear", align_corners=False)[0, 0]


def attention_figure(image: ImageInput, maps: AttentionMaps, title: str) -> Figure:
    """A row per query: the image with the query patch outlined, the attention map on the
    patch grid (grey: hidden by the mask), and the map upsampled and laid over the image."""
    H, W = image.show_HW3.shape[:2]
    gh, gw = maps.maps_QHW.shape[1:]
    patch = (H / gh, W / gw)
    fig, axes = _figure(len(maps.cells), 3)
    for (ax_img, ax_map, ax_over), cell, step, map_HW, start in zip(
        axes, maps.cells, maps.steps, maps.maps_QHW, maps.start_Q, strict=True
    ):
        vmax = float(torch.nan_to_num(map_HW, nan=0.0).max()) or 1.0
        ax_img.imshow(image.show_HW3.numpy(), interpolation="nearest")
        _mark(ax_img, cell, patch)
        ax_img.set_ylabel(f"query {cell[0]},{cell[1]}\nscan step {step}")
        im = ax_map.imshow(map_HW.numpy(), cmap=_ATTN_CMAP, vmin=0, vmax=vmax)
        _mark(ax_map, cell, (1, 1))
        ax_map.set_title(f"start token: {float(start):.2f}", fontsize="small")
        fig.colorbar(im, ax=ax_map, shrink=0.9)
        ax_over.imshow(image.show_HW3.numpy(), interpolation="nearest")
        ax_over.imshow(_upsample(map_HW, (H, W)).numpy(), cmap="inferno", alpha=0.6, vmin=0)
        _mark(ax_over, cell, patch, color="cyan")
    names = ["input", "attention on patches (grey: masked)", "overlay"]
    for ax, name in zip(axes[0], names, strict=True):
        ax.set_title(f"{name}\n{ax.get_title()}".strip(), fontsize="small")
    fig.suptitle(title, fontsize="medium")
    return fig


def similarity_figure(image: ImageInput, maps: SimilarityMaps, title: str) -> Figure:
    """A row per patch: the image with the patch outlined, cos(z_patch, z) of the patch
    encoder's embeddings and cos(h_patch, h) of the layer's outputs, on the patch grid."""
    H, W = image.show_HW3.shape[:2]
    gh, gw = maps.z_QHW.shape[1:]
    fig, axes = _figure(len(maps.cells), 3)
    for (ax_img, ax_z, ax_h), cell, z_HW, h_HW in zip(
        axes, maps.cells, maps.z_QHW, maps.h_QHW, strict=True
    ):
        ax_img.imshow(image.show_HW3.numpy(), interpolation="nearest")
        _mark(ax_img, cell, (H / gh, W / gw))
        ax_img.set_ylabel(f"patch {cell[0]},{cell[1]}")
        for ax, m in ((ax_z, z_HW), (ax_h, h_HW)):
            im = ax.imshow(m.numpy(), cmap=_SIM_CMAP, vmin=-1, vmax=1)
            _mark(ax, cell, (1, 1), color="black")
            fig.colorbar(im, ax=ax, shrink=0.9)
    names = ["input", "cosine, patch encoder z", f"cosine, layer {maps.layer} output h"]
    for ax, name in zip(axes[0], names, strict=True):
        ax.set_title(name, fontsize="small")
    fig.suptitle(title, fontsize="medium")
    return fig


def scans_figure(grid: tuple[int, ...], seed: int = 0, cols: int = 4) -> Figure:
    """Every registered scan order on a 1-D or 2-D ``grid``, one panel each (in
    ``SCANS.names()`` order), path through cell centres with start and end marked."""
    if len(grid) not in (1, 2):
        raise ValueError(
            f"drawing all orders needs a 1-D or 2-D grid, got {len(grid)} axes {tuple(grid)}; "
            "draw a 3-D grid one order at a time (--order NAME)"
        )
    names = SCANS.names()
    orders = {n: scan_order(n, grid, seed=seed) for n in names}  # ValueError if one refuses
    h, w = (1, *grid)[-2:]
    cols = min(cols, len(names))
    rows = math.ceil(len(names) / cols)
    side = min(PANEL * 1.25, 12.0 / cols)  # inches per panel
    fig = Figure(figsize=(cols * side, rows * side * max(h / w, 0.3) + 0.9), layout="constrained")
    FigureCanvasAgg(fig)
    for i, name in enumerate(names):
        draw_path(fig.add_subplot(rows, cols, i + 1), orders[name], grid, title=name)
    handles, labels = fig.axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncol=2, frameon=False, fontsize="small")
    fig.suptitle(f"scan orders on a {'x'.join(map(str, grid))} grid", fontsize="medium")
    return fig
