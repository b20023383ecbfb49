"""Sensor encoder: multichannel time series cut into 1-D patches (PatchTST).

``batch[field]`` is ``(B, C, L)``; patches of ``patch`` steps every ``stride`` steps (PatchTST's
16 / 8 by default) become tokens in one of two ways:

- ``channels: mixing``: one token per time patch, all channels projected together; grid
  ``(time,)``.
- ``channels: independent``: one token per (channel, time patch), every channel projected by the
  same weights (PatchTST's channel independence); grid ``(channel, time)``, so the scan order
  chooses the reading: ``raster`` is channel-major (all of channel 0 first), ``column``
  time-major (every channel of patch 0 first).

``revin`` normalises each series per instance and channel over its real steps (RevIN without the
affine, eps 1e-5). Variable length: an optional ``length`` field ``(B,)`` marks the real steps; a
patch that reaches past it is padding (``Tokens.keep`` False), so the predictor, the loss and
every pooling ignore it.
"""

from __future__ import annotations

from typing import Literal

import torch
from einops import rearrange
from pydantic import Field, PositiveInt
from torch import nn

from nepa.batch import Batch, FieldSpec, require_field
from nepa.encoders.base import ENCODERS, EncoderConfig
from nepa.encoders.patch import GridEncoder
from nepa.encoders.scans import check_scan
from nepa.tokens import Tokens


class SensorEncoderConfig(EncoderConfig):
    kind: Literal["sensor"] = "sensor"
    field: str = Field("signal", description="the batch field holding (B, C, L) series")
    length_field: str = Field(
        "length", description="the (B,) real lengths, used when the data declares this field"
    )
    patch: PositiveInt = Field(16, description="steps per patch")
    stride: PositiveInt = Field(8, description="steps between patch starts")
    channels: Literal["mixing", "independent"] = "mixing"
    revin: bool = Field(
        False, description="per-instance, per-channel normalisation (RevIN, eps 1e-5)"
    )
    scan: str = "raster"
    scan_seed: int = 0

    def grid(self, fields: dict[str, FieldSpec]) -> tuple[int, ...]:
        C, L = fields[self.field].shape
        T = (L - self.patch) // self.stride + 1
        return (T,) if self.channels == "mixing" else (C, T)

    def check_fields(self, fields: dict[str, FieldSpec]) -> None:
        spec = require_field(fields, self.field, ndim=2, reader="encoder 'sensor' (C, L)")
        C, L = spec.shape
        if C is None or L is None:
            raise ValueError(
                f"encoder 'sensor' needs a fixed channel count and (padded) length, field "
                f"{self.field!r} is {spec}; pad series to one length and give a length field"
            )
        if self.patch > L or (L - self.patch) % self.stride:
            raise ValueError(
                f"series length {L} is not covered by patches of encoder.patch={self.patch} "
                f"every encoder.stride={self.stride} steps ((length - patch) must be a multiple "
                "of stride): change the window length, the patch or the stride"
            )
        check_scan(self.scan, self.grid(fields), self.scan_seed)


@ENCODERS.register("sensor", config=SensorEncoderConfig)
class SensorEncoder(GridEncoder):
    """(B, C, L) series -> Tokens in scan order (see the module docstring)."""

    def __init__(self, cfg: SensorEncoderConfig, *, dim: int, fields: dict[str, FieldSpec]) -> None:
        super().__init__()
        cfg.check_fields(fields)
        self.cfg = cfg
        C, _ = fields[cfg.field].shape
        self.has_length = cfg.length_field in fields
        width = cfg.patch * (C if cfg.channels == "mixing" else 1)
        self.proj = nn.Linear(width, dim)
        self.patch_dim = width
        self.set_grid(cfg.grid(fields), cfg.scan, cfg.scan_seed)

    def forward(self, batch: Batch) -> Tokens:
        raw, keep = self._patches(batch)
        if self.cfg.channels == "mixing":
            emb = self.proj(rearrange(raw, "b c t p -> b t (c p)"))  # (B, T, D)
        else:
            emb = rearrange(self.proj(raw), "b c t d -> b (c t) d")  # (B, C*T, D)
        return self.scanned(emb, keep)

    def patches(self, batch: Batch) -> Tokens:
        raw, keep = self._patches(batch)
        how = "b c t p -> b t (c p)" if self.cfg.channels == "mixing" else "b c t p -> b (c t) p"
        return self.scanned(rearrange(raw, how), keep)

    def _patches(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(B, C, T, P) patches (after RevIN) and the row-major (B, tokens) padding mask."""
        x_BCL = batch[self.cfg.field].float()
        B, C, L = x_BCL.shape
        length = batch[self.cfg.length_field] if self.has_length else None
        real_BL = None if length is None else torch.arange(L, device=x_BCL.device) < length[:, None]
        if self.cfg.revin:
            x_BCL = revin(x_BCL, real_BL)
        patches = x_BCL.unfold(-1, self.cfg.patch, self.cfg.stride)  # (B, C, T, P)
        keep = None
        if length is not None:
            ends = torch.arange(patches.shape[2]) * self.cfg.stride + self.cfg.patch
            keep = self.keep_from_length(length, ends)  # (B, T): the patch lies in the real steps
            if self.cfg.channels == "independent":
                keep = keep.repeat(1, C)  # row-major (channel, time)
        return patches, keep


def revin(x_BCL: torch.Tensor, real_BL: torch.Tensor | None, eps: float = 1e-5) -> torch.Tensor:
    """Each series normalised per channel over its real steps; padded steps become 0."""
    if real_BL is None:
        mean = x_BCL.mean(-1, keepdim=True)
        var = x_BCL.var(-1, keepdim=True, unbiased=False)
        return (x_BCL - mean) / torch.sqrt(var + eps)
    w = real_BL[:, None].to(x_BCL.dtype)  # (B, 1, L)
    n = w.sum(-1, keepdim=True).clamp_min(1.0)
    mean = (x_BCL * w).sum(-1, keepdim=True) / n
    var = (((x_BCL - mean) * w) ** 2).sum(-1, keepdim=True) / n
    return (x_BCL - mean) / torch.sqrt(var + eps) * w
