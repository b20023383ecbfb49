"""Evaluation's config (the ``eval`` section of a run), beside the protocols that read it."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from nepa.eval.attentive import AttentiveConfig
from nepa.eval.finetune import FinetuneConfig
from nepa.schema import Config


class EvalConfig(Config):
    """Evaluation of frozen features: kNN (DINO protocol: cosine, temperature-weighted votes),
    the linear probe (standardised features, L2 chosen on a validation split of train) and the
    attentive probe (``attentive``: learned queries over the tokens of ``layer`` under
    ``attn``); and full fine-tuning (``finetune``: bidirectional, layer-wise lr decay).

    Defaults (README, "Evaluate"): the backbone's own attention mode (``attn: null``; causal
    for NEPA), the penultimate block, grid2 pooling. In sweeps they beat bidirectional
    attention, the last block and mean pooling.
    """

    k: int = Field(20, gt=0)
    temperature: float = Field(0.07, gt=0)
    layer: int = Field(-2, description="block index (1-based); negative counts from the last")
    pool: Literal["mean", "last", "start", "grid2", "grid4"] = "grid2"
    attn: Literal["causal", "bidirectional", "prefix"] | None = Field(
        None, description="attention mode of the features; null: the one the backbone trained with"
    )
    max_train: int | None = Field(None, gt=0)
    max_test: int | None = Field(None, gt=0)
    batch_size: int = Field(256, gt=0)
    precision: Literal["auto", "fp32", "bf16"] = Field(
        "auto",
        description="of feature extraction: auto is bf16 autocast where the device multiplies "
        "bf16 natively (CUDA, CPUs with AVX512-BF16 or AMX), fp32 elsewhere",
    )
    # Linear probe: L2 strengths tried, chosen on this fraction of train held out (never test).
    linear_l2: tuple[float, ...] = Field((1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1), min_length=1)
    val_fraction: float = Field(0.1, gt=0, lt=1)
    attentive: AttentiveConfig = AttentiveConfig()
    finetune: FinetuneConfig = FinetuneConfig()

    @field_validator("layer")
    @classmethod
    def _check_layer(cls, v: int) -> int:
        if v == 0:
            raise ValueError("blocks count from 1 (1 = the first, -1 = the last); 0 is no block")
        return v

    @field_validator("linear_l2")
    @classmethod
    def _check_l2(cls, v: tuple[float, ...]) -> tuple[float, ...]:
        if min(v) <= 0:
            raise ValueError(f"L2 strengths must be > 0, got {list(v)}")
        return v
