"""The predictor's real attention weights of chosen query patches, mapped back to the grid."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from nepa.viz.grid import Cell, to_grid, token_index
from nepa.viz.model import VizError, VizModel


@dataclass
class AttentionMaps:
    """Attention of each query patch at one layer (mean over heads, or one head).

    maps_QHW: (Q, gh, gw) weight the query puts on each patch; NaN where the mask hides the
              key (under causal attention: patches after the query in scan order).
    start_Q:  (Q,) weight on the start token (rows of ``maps`` + start sum to 1).
    steps:    the scan step of each query (its position in token order).
    """

    cells: list[Cell]
    steps: list[int]
    maps_QHW: torch.Tensor
    start_Q: torch.Tensor
    layer: int
    attn: str
    head: int | None


@torch.no_grad()
def attention_maps(
    model: VizModel,
    x_CHW: torch.Tensor,
    *,
    cells: list[Cell],
    layer: int,
    attn: str | None = None,
    head: int | None = None,
) -> AttentionMaps:
    """Attention of ``cells`` (grid (row, col)) at block ``layer`` (1-based) for one image.

    ``attn`` None uses the run's own mask; ``head`` None averages the heads.
    """
    mode = attn or model.backbone.attn
    n_heads = model.backbone.heads
    if head is not None and not 0 <= head < n_heads:
        raise VizError(f"head {head} is out of range: this run has heads 0..{n_heads - 1}")
    weights, allowed, tok, lead = model.backbone.attention_maps(
        model.batch(x_CHW), layer=layer, attn=mode
    )
    attn_HSS = weights[0]  # (heads, S, S); the first ``lead`` positions are not tokens
    attn_SS = attn_HSS.mean(0) if head is None else attn_HSS[head]
    steps = [token_index(tok.coords, c) for c in cells]
    rows = torch.tensor(steps) + lead  # query rows, past a start token
    S = attn_SS.shape[0]
    visible_QT = torch.ones(len(rows), S - lead, dtype=torch.bool)
    if allowed is not None:
        visible_QT = allowed[rows, lead:]
    keys_QT = attn_SS[rows, lead:].masked_fill(~visible_QT, float("nan"))
    start_Q = attn_SS[rows, 0] if lead else torch.zeros(len(rows))
    return AttentionMaps(
        cells=list(cells),
        steps=steps,
        maps_QHW=to_grid(keys_QT, tok.coords, tok.grid),
        start_Q=start_Q,
        layer=layer,
        attn=mode,
        head=head,
    )
