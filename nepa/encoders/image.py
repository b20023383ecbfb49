"""Image encoder: Conv2d patchify (kernel = stride = patch), tokens in a configured scan order."""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field
from torch import nn

from nepa.encoders.base import ENCODERS, Encoder, EncoderConfig
from nepa.encoders.scans import SCANS, scan_order
from nepa.tokens import Tokens


class ImageEncoderConfig(EncoderConfig):
    kind: Literal["image"] = "image"
    patch_size: int | tuple[int, int] = Field(16, description="patch height/width in pixels")
    scan: str = "raster"
    scan_seed: int = 0

    @property
    def patch_hw(self) -> tuple[int, int]:
        p = self.patch_size
        return (p, p) if isinstance(p, int) else tuple(p)  # type: ignore[return-value]

    def check_input(self, sample_shape: tuple[int, ...]) -> None:
        if len(sample_shape) != 3:
            raise ValueError(
                f"encoder 'image' needs (C, H, W) samples, the data gives {sample_shape}"
            )
        _, H, W = sample_shape
        ph, pw = self.patch_hw
        if H % ph or W % pw:
            raise ValueError(
                f"image size {H}x{W} is not divisible by the patch size {ph}x{pw}: change "
                "data.image_size or encoder.patch_size"
            )
        if self.scan not in SCANS:
            raise ValueError(f"unknown scan order {self.scan!r}; known: {', '.join(SCANS.names())}")


@ENCODERS.register("image", config=ImageEncoderConfig)
class ImageEncoder(Encoder):
    """(B, C, H, W) -> Tokens with emb (B, T, D), T = (H/ph) * (W/pw), in scan order."""

    n_axes = 2

    def __init__(self, cfg: ImageEncoderConfig, *, dim: int, sample_shape: tuple[int, ...]) -> None:
        super().__init__()
        cfg.check_input(sample_shape)
        C, H, W = sample_shape
        ph, pw = cfg.patch_hw
        self.proj = nn.Conv2d(C, dim, kernel_size=(ph, pw), stride=(ph, pw))
        self.grid = (H // ph, W // pw)
        order = torch.from_numpy(scan_order(cfg.scan, self.grid, cfg.scan_seed))
        rows, cols = torch.meshgrid(
            torch.arange(self.grid[0]), torch.arange(self.grid[1]), indexing="ij"
        )
        coords = torch.stack([rows, cols], dim=-1).reshape(-1, 2)  # row-major (T, 2)
        self.register_buffer("order", order, persistent=False)
        self.register_buffer("coords", coords[order], persistent=False)

    def forward(self, x_BCHW: torch.Tensor) -> Tokens:
        if tuple(x_BCHW.shape[-2:]) != (
            self.grid[0] * self.proj.stride[0],
            self.grid[1] * self.proj.stride[1],
        ):
            raise ValueError(
                f"expected images of size {tuple(self.proj.stride)} x {self.grid}, got {tuple(x_BCHW.shape)}"
            )
        emb = self.proj(x_BCHW).flatten(2).transpose(1, 2)  # (B, T, D) row-major
        return Tokens(emb=emb[:, self.order], coords=self.coords, grid=self.grid)
