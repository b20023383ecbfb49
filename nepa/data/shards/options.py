"""Config fields shared by every shard-backed dataset (one per modality)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, NonNegativeInt, PositiveInt, model_validator

from nepa.data.base import DataConfig


class ShardOptions(DataConfig):
    """Where the shards are and how to stream them.

    ``source``: a folder written by ``nepa shards write`` (or its ``manifest.json``); a template
    with ``{name}`` such as ``pipe:curl -sf http://host/cifar10/{name}``; or a shard pattern
    without a manifest such as ``/data/{split}-{000000..000099}.tar`` (resampled epochs only).
    ``epochs``: ``exact`` (every sample once per epoch across ranks and workers) or
    ``resampled`` (shards drawn with replacement; ``epoch_steps`` steps per nominal epoch,
    default: samples // global batch). ``max_bad_fraction``: stop the run (after saving a
    checkpoint) when more than this fraction of the samples read were bad.
    ``allow_pickle``: read shards that contain pickle members (.pyd, .pickle, .pkl, .pth, .pt),
    dropping those members; nepa never unpickles them.
    """

    source: str
    epochs: Literal["exact", "resampled"] = "exact"
    epoch_steps: PositiveInt | None = None
    shuffle_buffer: NonNegativeInt = 1000
    max_bad_fraction: float = Field(0.01, ge=0.0, le=1.0)
    allow_pickle: bool = False

    @model_validator(mode="after")
    def _check_epoch_steps(self) -> ShardOptions:
        if self.epochs == "exact" and self.epoch_steps is not None:
            raise ValueError(
                "epoch_steps applies to epochs=resampled only; an exact epoch is the whole split "
                "(samples // global batch steps). Unset epoch_steps or set epochs: resampled"
            )
        return self
