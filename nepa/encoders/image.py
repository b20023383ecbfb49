"""Image encoder: Conv2d patchify (kernel = stride = patch), tokens in a configured scan order."""

from __future__ import annotations

from typing import Literal

from einops import rearrange
from pydantic import Field, PositiveInt
from torch import nn

from nepa.batch import Batch, FieldSpec, require_field
from nepa.encoders.base import ENCODERS, EncoderConfig
from nepa.encoders.patch import GridEncoder
from nepa.encoders.scans import check_scan
from nepa.tokens import Tokens


class ImageEncoderConfig(EncoderConfig):
    kind: Literal["image"] = "image"
    field: str = Field("image", description="the batch field holding (B, C, H, W) images")
    patch_size: PositiveInt | tuple[PositiveInt, PositiveInt] = Field(
        16, description="patch height/width in pixels"
    )
    scan: str = "raster"
    scan_seed: int = 0

    @property
    def patch_hw(self) -> tuple[int, int]:
        p = self.patch_size
        return (p, p) if isinstance(p, int) else tuple(p)  # type: ignore[return-value]

    def grid(self, fields: dict[str, FieldSpec]) -> tuple[int, int]:
        _, H, W = fields[self.field].shape
        ph, pw = self.patch_hw
        return H // ph, W // pw

    def check_fields(self, fields: dict[str, FieldSpec]) -> None:
        spec = require_field(fields, self.field, ndim=3, reader="encoder 'image' (C, H, W)")
        _, H, W = spec.shape
        if H is None or W is None:
            raise ValueError(
                f"encoder 'image' needs a fixed image size, field {self.field!r} is {spec}"
            )
        ph, pw = self.patch_hw
        if H % ph or W % pw:
            raise ValueError(
                f"image size {H}x{W} is not divisible by the patch size {ph}x{pw}: change "
                "data.image_size or encoder.patch_size"
            )
        check_scan(self.scan)


@ENCODERS.register("image", config=ImageEncoderConfig)
class ImageEncoder(GridEncoder):
    """``batch[field]`` (B, C, H, W) -> Tokens with emb (B, T, D), T = (H/ph) * (W/pw), in scan order."""

    def __init__(self, cfg: ImageEncoderConfig, *, dim: int, fields: dict[str, FieldSpec]) -> None:
        super().__init__()
        cfg.check_fields(fields)
        self.field = cfg.field
        C = fields[cfg.field].shape[0]
        ph, pw = cfg.patch_hw
        self.proj = nn.Conv2d(C, dim, kernel_size=(ph, pw), stride=(ph, pw))
        self.patch_dim = C * ph * pw
        self.set_grid(cfg.grid(fields), cfg.scan, cfg.scan_seed)

    def forward(self, batch: Batch) -> Tokens:
        x_BCHW = batch[self.field]
        if tuple(x_BCHW.shape[-2:]) != (
            self.grid[0] * self.proj.stride[0],
            self.grid[1] * self.proj.stride[1],
        ):
            raise ValueError(
                f"expected images of size {tuple(self.proj.stride)} x {self.grid}, got {tuple(x_BCHW.shape)}"
            )
        emb = rearrange(self.proj(x_BCHW), "b d h w -> b (h w) d")  # (B, T, D) row-major
        return self.scanned(emb)

    def patches(self, batch: Batch) -> Tokens:
        ph, pw = self.proj.kernel_size
        x = rearrange(batch[self.field], "b c (h ph) (w pw) -> b (h w) (c ph pw)", ph=ph, pw=pw)
        return self.scanned(x.float())
