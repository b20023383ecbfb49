"""Spectrogram encoder: 2-D patches over (time, frequency) of a log-mel filterbank.

``batch[field]`` is ``(B, frames, mel_bins)`` (the audio front end's fbank); a ``Conv2d`` with
kernel = stride = (``patch_time``, ``patch_freq``) cuts it into patches: 16 x 16 by default (AST,
AudioMAE), SSAST's frame patches with ``patch_time=2, patch_freq=128``. The grid is
``(time, freq)``; the default ``raster`` scan is time-major (all frequencies of the first time
patch first), ``column`` frequency-major. An optional ``length`` field ``(B,)`` gives each clip's
real frames: a time patch that reaches past it is padding (``Tokens.keep`` False).
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


class SpectrogramEncoderConfig(EncoderConfig):
    kind: Literal["spectrogram"] = "spectrogram"
    field: str = Field("fbank", description="the batch field holding (B, frames, mel_bins)")
    length_field: str = Field("length", description="the (B,) real frames, when declared")
    patch_time: PositiveInt = Field(16, description="frames per patch")
    patch_freq: PositiveInt = Field(16, description="mel bins per patch")
    scan: str = "raster"
    scan_seed: int = 0

    def grid(self, fields: dict[str, FieldSpec]) -> tuple[int, int]:
        frames, bins = fields[self.field].shape
        return frames // self.patch_time, bins // self.patch_freq

    def check_fields(self, fields: dict[str, FieldSpec]) -> None:
        spec = require_field(fields, self.field, ndim=2, reader="encoder 'spectrogram' (T, F)")
        frames, bins = spec.shape
        if frames is None or bins is None:
            raise ValueError(f"encoder 'spectrogram' needs a fixed (T, F), field is {spec}")
        if frames % self.patch_time:
            raise ValueError(
                f"{frames} frames are not divisible by encoder.patch_time={self.patch_time}: "
                "change data.target_frames or the patch"
            )
        if bins % self.patch_freq:
            raise ValueError(
                f"{bins} mel bins are not divisible by encoder.patch_freq={self.patch_freq}: "
                "change data.mel_bins or the patch"
            )
        check_scan(self.scan)


@ENCODERS.register("spectrogram", config=SpectrogramEncoderConfig)
class SpectrogramEncoder(GridEncoder):
    """(B, T, F) fbank -> Tokens on a (time, freq) grid, in scan order."""

    def __init__(
        self, cfg: SpectrogramEncoderConfig, *, dim: int, fields: dict[str, FieldSpec]
    ) -> None:
        super().__init__()
        cfg.check_fields(fields)
        self.cfg = cfg
        self.has_length = cfg.length_field in fields
        patch = (cfg.patch_time, cfg.patch_freq)
        self.proj = nn.Conv2d(1, dim, kernel_size=patch, stride=patch)
        self.patch_dim = cfg.patch_time * cfg.patch_freq
        self.set_grid(cfg.grid(fields), cfg.scan, cfg.scan_seed)

    def forward(self, batch: Batch) -> Tokens:
        x_BTF = batch[self.cfg.field].float()
        emb = rearrange(self.proj(x_BTF[:, None]), "b d t f -> b (t f) d")  # row-major
        return self.scanned(emb, self.keep(batch))

    def patches(self, batch: Batch) -> Tokens:
        pt, pf = self.cfg.patch_time, self.cfg.patch_freq
        x = rearrange(
            batch[self.cfg.field].float(), "b (t pt) (f pf) -> b (t f) (pt pf)", pt=pt, pf=pf
        )
        return self.scanned(x, self.keep(batch))

    def keep(self, batch: Batch) -> torch.Tensor | None:
        """Row-major (B, T): the patches inside each clip's real frames."""
        length = batch[self.cfg.length_field] if self.has_length else None
        return self.keep_time_steps(length, self.cfg.patch_time)
