"""What evaluation reads: a backbone and the typed features it returns.

A :class:`Backbone` maps a batch to :class:`Features` (DINOv2's evaluation depends on one such
call, ``get_intermediate_layers``). Probes pool ``Features``; fine-tuning trains a copy of the
backbone; ``nepa viz`` draws its attention. Nothing in evaluation reads an objective's config or
reaches into its submodules: it asks the objective for ``backbone()`` and ``features()``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from nepa.batch import Batch
from nepa.encoders.base import Encoder
from nepa.predictor.transformer import Predictor
from nepa.tokens import Tokens


@dataclass
class Features:
    """Frozen features of one batch.

    layers:  one (B, T, D) tensor of token outputs per requested layer, in token (scan) order.
    keep:    (B, T) bool, True for real tokens, or None when nothing is padded.
    coords:  (T, A) or (B, T, A) integer grid coordinates of the tokens.
    grid:    the grid shape (A ints).
    summary: one (B, D) per-sample vector per layer (e.g. the start token's output), or None.
    inputs:  the (B, T, D) embeddings the backbone was fed (the patch embeddings z), or None.
    """

    layers: list[torch.Tensor]
    keep: torch.Tensor | None
    coords: torch.Tensor
    grid: tuple[int, ...]
    summary: list[torch.Tensor] | None = None
    inputs: torch.Tensor | None = None


class Backbone(nn.Module):
    """The evaluated network: ``forward(batch, layers, attn) -> Features``.

    ``depth`` layers can be read (1-based), each ``dim`` wide; ``heads`` is a sensible number of
    attention heads for a probe over them; ``attn`` is the attention mode it was trained with.
    """

    depth: int
    dim: int
    heads: int
    attn: str

    def forward(
        self, batch: Batch, *, layers: list[int] | None = None, attn: str | None = None
    ) -> Features:  # pragma: no cover - interface
        raise NotImplementedError

    def layer_groups(self) -> list[list[tuple[str, nn.Parameter]]]:
        """Parameters from input (group 0, the input embedding) to output, one group per layer;
        fine-tuning scales each group's lr (layer-wise decay) and freezes
        :meth:`input_embedding`."""
        raise NotImplementedError

    def no_weight_decay(self) -> set[str]:
        """Names of parameters (besides norms and biases) fine-tuning does not decay."""
        return set()

    def input_embedding(self) -> list[tuple[str, nn.Parameter]]:
        """The parameters fine-tuning keeps frozen, as the reference freezes the patch
        embedding; by default layer group 0."""
        return self.layer_groups()[0]

    def set_drop_path(self, rate: float) -> None:
        """Stochastic depth for fine-tuning (0 disables)."""

    def attention_maps(
        self, batch: Batch, *, layer: int, attn: str | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, Tokens, int]:
        """(weights (B, H, S, S), allowed (S, S) or None, the tokens, the number of leading
        non-token positions such as a start token) of block ``layer``, for pictures."""
        raise NotImplementedError(f"{type(self).__name__} cannot show its attention")


class TokenBackbone(Backbone):
    """An encoder and the predictor over its tokens: the backbone of NEPA-like objectives.

    It wraps the objective's own modules (no copy); outputs exclude the start token, whose
    output becomes ``Features.summary``.
    """

    def __init__(self, encoder: Encoder, predictor: Predictor) -> None:
        super().__init__()
        self.encoder, self.predictor = encoder, predictor
        self.depth, self.dim, self.heads = predictor.depth, predictor.dim, predictor.heads
        self.attn = predictor.cfg.attn

    def tokens(self, batch: Batch) -> Tokens:
        return self.encoder(batch)

    def forward(
        self, batch: Batch, *, layers: list[int] | None = None, attn: str | None = None
    ) -> Features:
        tok = self.encoder(batch)
        layers = layers or [self.depth]
        outs = self.predictor(
            tok.emb, tok.coords, tok.grid, tok.keep, attn=attn, return_layers=layers
        )
        start = 1 if self.predictor.has_start_token else 0
        return Features(
            layers=[o[:, start:] for o in outs],
            keep=tok.keep,
            coords=tok.coords,
            grid=tok.grid,
            summary=[o[:, 0] for o in outs] if start else None,
            inputs=tok.emb,
        )

    def layer_groups(self) -> list[list[tuple[str, nn.Parameter]]]:
        groups: list[list[tuple[str, nn.Parameter]]] = [[] for _ in range(self.depth + 2)]
        blocks = {id(p): i + 1 for i, b in enumerate(self.predictor.blocks) for p in b.parameters()}
        for name, p in self.named_parameters():
            if name.startswith("encoder.") or name == "predictor.start_token":
                groups[0].append((name, p))
            elif id(p) in blocks:
                groups[blocks[id(p)]].append((name, p))
            else:  # the final norm, and anything else after the blocks
                groups[-1].append((name, p))
        return groups

    def no_weight_decay(self) -> set[str]:
        return {f"predictor.{n}" for n in self.predictor.no_weight_decay()}

    def input_embedding(self) -> list[tuple[str, nn.Parameter]]:
        # The encoder only: the start token shares layer group 0's lr but is trained.
        return list(self.encoder.named_parameters(prefix="encoder"))

    def set_drop_path(self, rate: float) -> None:
        self.predictor.set_drop_path(rate)

    def attention_maps(self, batch: Batch, *, layer: int, attn: str | None = None):
        tok = self.encoder(batch)
        weights = self.predictor.attention_maps(
            tok.emb, tok.coords, tok.grid, tok.keep, layer=layer, attn=attn
        )
        allowed = self.predictor.mask_spec(tok.keep, attn).dense(weights.shape[-1], weights.device)
        lead = 1 if self.predictor.has_start_token else 0
        return weights, None if allowed is None else allowed[0, 0], tok, lead
