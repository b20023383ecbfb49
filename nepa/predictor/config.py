"""Predictor config (one transformer for every modality)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from nepa.schema import Config


class PredictorConfig(Config):
    """The causal transformer predictor.

    attn: ``causal`` is NEPA; ``bidirectional`` is the paper's ablation (expected to degrade);
    ``prefix`` lets the start token (if any) plus the first ``prefix_len`` tokens see each other.
    start_token: put a learned token in front of the sequence (outputs ``(B, T + 1, D)``, the
    start token at index 0); off, the outputs are ``(B, T, D)``, one per input token.
    RoPE splits each head over the grid axes (``floor(Dh / (2A))`` channel pairs per axis, the
    rest unrotated), so the only constraint it adds, ``Dh >= 2A``, is checked when the
    predictor is built for an A-axis encoder.
    """

    dim: int = Field(192, gt=0, description="model width")
    depth: int = Field(6, gt=0, description="transformer blocks")
    heads: int = Field(3, gt=0, description="attention heads (dim / heads per head)")
    mlp: Literal["swiglu", "gelu"] = "swiglu"
    mlp_ratio: float = Field(4.0, gt=0)
    qk_norm: bool = True
    layerscale: float | None = Field(1e-5, gt=0, description="LayerScale init; null: none")
    rope: bool = True
    rope_theta: float = Field(100.0, gt=0)
    rope_rescale: tuple[float, float] | None = None
    drop_path: float = 0.0
    attn: Literal["causal", "bidirectional", "prefix"] = "causal"
    prefix_len: int = Field(0, ge=0)
    attn_backend: Literal["auto", "xformers", "sdpa"] = "auto"
    sdpa_kernel: Literal["auto", "default", "math", "fp32"] = Field(
        "auto",
        description="with the sdpa backend, which of torch's equivalent formulations runs: "
        "default (torch's dispatch), math (unfused), fp32 (bf16 inputs attended in fp32); "
        "auto times them on the CPU at each new shape and keeps the fastest "
        "(see nepa.predictor.sdpa_kernels)",
    )
    qkv_bias: bool = True
    start_token: bool = True

    @model_validator(mode="after")
    def _check(self) -> PredictorConfig:
        if self.dim % self.heads:
            raise ValueError(f"dim={self.dim} must be divisible by heads={self.heads}")
        if (self.dim // self.heads) % 2:
            raise ValueError(f"head dim {self.dim // self.heads} must be even (dim / heads)")
        if not 0.0 <= self.drop_path < 1.0:
            raise ValueError("drop_path must be in [0, 1)")
        if self.attn == "prefix" and self.prefix_len <= 0:
            raise ValueError(
                "attn='prefix' needs prefix_len > 0 (tokens, not counting the start token)"
            )
        if self.attn != "prefix" and self.prefix_len:
            raise ValueError("prefix_len is only used with attn='prefix'; set it to 0")
        if self.rope_rescale is not None and not 0 < self.rope_rescale[0] <= self.rope_rescale[1]:
            raise ValueError("rope_rescale must be (lo, hi) with 0 < lo <= hi, or null")
        return self

    @property
    def head_dim(self) -> int:
        return self.dim // self.heads

    @property
    def hidden_dim(self) -> int:
        """MLP width; SwiGLU uses 2/3 of it per branch so both MLPs cost the same."""
        h = int(self.dim * self.mlp_ratio)
        return int(2 * h / 3) if self.mlp == "swiglu" else h
