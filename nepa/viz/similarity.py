"""Cosine similarity of chosen patches' embeddings to every patch: encoder z and layer h."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from nepa.viz.grid import Cell, to_grid, token_index
from nepa.viz.model import VizModel


@dataclass
class SimilarityMaps:
    """z_QHW / h_QHW: (Q, gh, gw) cosine similarity of each chosen patch to every patch, for
    the patch encoder's embedding z and for block ``layer``'s final-normed output h."""

    cells: list[Cell]
    z_QHW: torch.Tensor
    h_QHW: torch.Tensor
    layer: int
    attn: str


def cosine_to(emb_TD: torch.Tensor, steps: list[int]) -> torch.Tensor:
    """Cosine similarity of the tokens at ``steps`` to all tokens: (T, D) -> (Q, T)."""
    unit_TD = F.normalize(emb_TD.float(), dim=-1)
    return unit_TD[steps] @ unit_TD.T


@torch.no_grad()
def similarity_maps(
    model: VizModel,
    x_CHW: torch.Tensor,
    *,
    cells: list[Cell],
    layer: int,
    attn: str | None = None,
) -> SimilarityMaps:
    """Similarity maps of ``cells`` for one image at block ``layer`` (1-based)."""
    mode = attn or model.backbone.attn
    feats = model.backbone(model.batch(x_CHW), layers=[layer], attn=mode)
    steps = [token_index(feats.coords, c) for c in cells]
    return SimilarityMaps(
        cells=list(cells),
        z_QHW=to_grid(cosine_to(feats.inputs[0], steps), feats.coords, feats.grid),
        h_QHW=to_grid(cosine_to(feats.layers[0][0], steps), feats.coords, feats.grid),
        layer=layer,
        attn=mode,
    )
