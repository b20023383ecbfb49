"""The trainer's config: steps, batch, precision, device and the logging/checkpoint cadence."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from nepa.schema import Config


class TrainConfig(Config):
    steps: int = Field(1000, gt=0, description="optimizer steps")
    batch_size: int = Field(128, gt=0, description="global batch per optimizer step")
    accum: int = Field(1, gt=0, description="micro-batches per optimizer step")
    precision: Literal["auto", "fp32", "bf16"] = Field(
        "auto",
        description="auto: bf16 autocast on CUDA, fp32 on CPUs; bf16 or fp32 to force one. "
        "On a CPU with native bf16 a bf16 step measured 2x faster than fp32 "
        "(`nepa bench step` compares them): set bf16 there for speed",
    )
    device: Literal["auto", "cpu", "cuda"] = "auto"
    num_workers: int = Field(0, ge=0)
    log_every: int = Field(10, gt=0)
    ckpt_every: int = Field(500, gt=0)
    keep_ckpts: int = Field(2, gt=0)
    deterministic: bool = False
    dist_timeout_s: float = Field(
        300.0,
        gt=0,
        description="seconds a collective may wait for a hung rank before the job fails",
    )
