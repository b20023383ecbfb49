"""Video encoder: tubelets (VideoMAE, V-JEPA) on a (time, height, width) grid.

``batch[field]`` is ``(B, C, T, H, W)``; a ``Conv3d`` with kernel = stride = ``tubelet``
(``t x p x p``; 2 x 16 x 16 as in VideoMAE and V-JEPA, smaller for small frames) cuts it into
tubelets. The grid is ``(time, height, width)`` and the predictor's RoPE runs over all three
axes; the scan order reads it time-major (``raster``, ``snake``, ``hilbert``: every cell of one
time step before the next) or in a ``random`` order. An optional ``length`` field ``(B,)``
gives each clip's real frames; a tubelet reaching past it is padding (``Tokens.keep`` False).
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

AXES = ("frames", "height", "width")


class VideoEncoderConfig(EncoderConfig):
    kind: Literal["video"] = "video"
    field: str = Field("video", description="the batch field holding (B, C, T, H, W) clips")
    length_field: str = Field("length", description="the (B,) real frames, when declared")
    tubelet: tuple[PositiveInt, PositiveInt, PositiveInt] = Field(
        (2, 16, 16), description="frames x height x width of one tubelet"
    )
    scan: str = "raster"
    scan_seed: int = 0

    def grid(self, fields: dict[str, FieldSpec]) -> tuple[int, int, int]:
        _, *thw = fields[self.field].shape
        return tuple(n // k for n, k in zip(thw, self.tubelet, strict=True))  # type: ignore[return-value]

    def check_fields(self, fields: dict[str, FieldSpec]) -> None:
        spec = require_field(fields, self.field, ndim=4, reader="encoder 'video' (C, T, H, W)")
        _, *thw = spec.shape
        if any(n is None for n in thw):
            raise ValueError(f"encoder 'video' needs a fixed (T, H, W), field is {spec}")
        for axis, n, k in zip(AXES, thw, self.tubelet, strict=True):
            if n % k:
                raise ValueError(
                    f"{n} {axis} are not divisible by the tubelet's {k} (encoder.tubelet="
                    f"{list(self.tubelet)}): change the data's {axis} or the tubelet"
                )
        check_scan(self.scan, self.grid(fields), self.scan_seed)


@ENCODERS.register("video", config=VideoEncoderConfig)
class VideoEncoder(GridEncoder):
    """(B, C, T, H, W) clips -> Tokens on a (time, height, width) grid, in scan order."""

    def __init__(self, cfg: VideoEncoderConfig, *, dim: int, fields: dict[str, FieldSpec]) -> None:
        super().__init__()
        cfg.check_fields(fields)
        self.cfg = cfg
        C = fields[cfg.field].shape[0]
        self.has_length = cfg.length_field in fields
        self.proj = nn.Conv3d(C, dim, kernel_size=cfg.tubelet, stride=cfg.tubelet)
        self.patch_dim = C * cfg.tubelet[0] * cfg.tubelet[1] * cfg.tubelet[2]
        self.set_grid(cfg.grid(fields), cfg.scan, cfg.scan_seed)

    def forward(self, batch: Batch) -> Tokens:
        x_BCTHW = batch[self.cfg.field].float()
        emb = rearrange(self.proj(x_BCTHW), "b d t h w -> b (t h w) d")  # row-major
        return self.scanned(emb, self.keep(batch))

    def patches(self, batch: Batch) -> Tokens:
        kt, kh, kw = self.cfg.tubelet
        x = rearrange(
            batch[self.cfg.field].float(),
            "b c (t kt) (h kh) (w kw) -> b (t h w) (c kt kh kw)",
            kt=kt,
            kh=kh,
            kw=kw,
        )
        return self.scanned(x, self.keep(batch))

    def keep(self, batch: Batch) -> torch.Tensor | None:
        """Row-major (B, T): the tubelets inside each clip's real frames."""
        length = batch[self.cfg.length_field] if self.has_length else None
        return self.keep_time_steps(length, self.cfg.tubelet[0])
