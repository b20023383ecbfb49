"""Encoder contract: one modality's batch -> Tokens."""

from __future__ import annotations

from typing import Any

from torch import nn

from nepa.batch import Batch, FieldSpec
from nepa.registry import Registry
from nepa.schema import ComponentConfig
from nepa.tokens import Tokens


class EncoderConfig(ComponentConfig):
    """Base of every encoder config. ``kind`` names the registry entry."""

    def check_fields(self, fields: dict[str, FieldSpec]) -> None:
        """Raise ValueError, saying how to fix it, if a batch with these fields cannot be
        encoded (a field this encoder reads is missing, or has the wrong shape). Called when the
        RunConfig is validated; :func:`nepa.batch.require_field` does the usual check."""

    def grid(self, fields: dict[str, FieldSpec]) -> tuple[int, ...] | None:
        """The token grid this encoder makes of data with these fields, or None when it cannot
        say before it is built; objectives check it (:meth:`ObjectiveConfig.check_grid`)."""
        return None


class Encoder(nn.Module):
    """Maps a batch (a dict of tensors) of one modality to :class:`Tokens`.

    Subclasses set ``n_axes`` (grid axes of the coordinates they emit) and ``grid`` once built.
    """

    n_axes: int
    grid: tuple[int, ...]

    def forward(self, batch: Batch) -> Tokens:  # pragma: no cover - interface
        raise NotImplementedError

    #: P, the number of raw values in one token's patch (set by encoders with :meth:`patches`)
    patch_dim: int

    def patches(self, batch: Batch) -> Tokens:
        """The raw values each token is made of, before any learned projection: ``Tokens``
        whose ``emb`` is ``(B, T, P)`` in the same scan order, coordinates and padding as
        :meth:`forward` (what a discrete tokenizer clusters)."""
        raise NotImplementedError(
            f"encoder {type(self).__name__} cannot give its raw patches (a discrete tokenizer "
            "needs them): implement patches(batch)"
        )


#: builder signature: ``fn(cfg, *, dim: int, fields: dict[str, FieldSpec]) -> Encoder``
ENCODERS: Registry[Any] = Registry("encoder")


def build_encoder(cfg: EncoderConfig, *, dim: int, fields: dict[str, FieldSpec]) -> Encoder:
    return ENCODERS.get(cfg.kind)(cfg, dim=dim, fields=fields)
