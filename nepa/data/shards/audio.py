"""``audio_shards``: audio clips (``.wav``/``.flac``/``.ogg`` + optional ``.cls``) streamed from
shards through the audio SSL front end, in the loader workers.

Each clip is decoded with soundfile and turned into a normalised, cropped or padded fbank
exactly as ``audio_folder`` does (:mod:`nepa.data.fbank`); a clip shorter than ``min_frames`` is
a counted ``short`` skip. ``mean``/``std`` default to the fbank statistics ``nepa shards write``
stored in the manifest for the train split, used only when they were computed at this config's
sample rate and mel bins.
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
import torch
from torch.utils.data import Dataset

from nepa.batch import LABEL, Batch
from nepa.data.audio import FbankOptions
from nepa.data.base import DATASETS
from nepa.data.decode import decode_bytes, exts_of
from nepa.data.fbank import crop_or_pad, front_end, stats_name
from nepa.data.shards.codecs import DecodeError, field_ext, label_of, payload_field
from nepa.data.shards.manifest import ShardList, resolve_shards
from nepa.data.shards.options import ShardOptions
from nepa.data.shards.reader import decode_all
from nepa.data.shards.stream import ShardTrainData


class AudioShardsConfig(ShardOptions, FbankOptions):
    """Audio shards; ``mean``/``std``: the fbank statistics (default: the manifest's)."""

    kind: Literal["audio_shards"] = "audio_shards"
    mean: float | None = None
    std: float | None = None


class AudioSample:
    """Decode, front end, normalise, crop (seeded when training) or pad: a ``{"fbank",
    "length", "label"}`` sample."""

    def __init__(self, cfg: AudioShardsConfig, mean: float, std: float, train: bool) -> None:
        self.cfg, self.mean, self.std, self.train = cfg, mean, std, train

    def __call__(self, sample: dict[str, Any], seed: int | None = None) -> Batch:
        field = payload_field(sample, exts_of("audio"))  # built-in or user-registered extensions
        wave, rate = decode_bytes(field_ext(field), sample[field])
        fb = front_end(wave, rate, self.cfg.sample_rate, self.cfg.mel_bins)
        if len(fb) < self.cfg.min_frames:
            raise DecodeError(
                f"clip of {len(fb)} frames is shorter than min_frames={self.cfg.min_frames}",
                kind="short",
            )
        if not np.isfinite(fb).all():
            raise DecodeError("clip holds non-finite samples", kind="nonfinite")
        fb = (fb - self.mean) / (2 * self.std)
        out = crop_or_pad(fb, self.cfg.target_frames, seed if self.train else None)
        return {**out, LABEL: torch.tensor(label_of(sample))}

    def finish_batch(self, batch: Batch) -> Batch:
        return batch


def fbank_statistics(cfg: AudioShardsConfig, shards: ShardList) -> tuple[float, float]:
    """The config's mean/std, or the manifest's train-split fbank statistics at its settings."""
    if cfg.mean is not None and cfg.std is not None:
        return cfg.mean, cfg.std
    want = stats_name(cfg.sample_rate, cfg.mel_bins)
    m = shards.manifest
    info = m.splits.get("train") if m is not None else None
    if info is None or info.stats != want or info.mean is None or info.std is None:
        have = "none" if info is None or info.stats is None else repr(info.stats)
        raise ValueError(
            f"{cfg.source!r} stores no {want} statistics for a train split (it has {have}): set "
            "data.mean and data.std (the train split's fbank mean and std at these settings)"
        )
    return info.mean[0], info.std[0]


class SampleList(Dataset):
    """A split decoded into memory for evaluation: ``ds[i]`` -> the i-th sample dict."""

    def __init__(self, items: list[Batch], classes: list[str]) -> None:
        self.items, self.classes, self.num_classes = items, classes, len(classes)
        self.labels = torch.stack([it[LABEL] for it in items]).to(torch.int64)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, key: int | tuple[int, int]) -> Batch:
        return self.items[key[0] if isinstance(key, tuple) else key]


@DATASETS.register("audio_shards", config=AudioShardsConfig)
def build_audio_shards(
    cfg: AudioShardsConfig, *, split: str, train: bool
) -> ShardTrainData | SampleList:
    shards = resolve_shards(cfg.source, split)
    mean, std = fbank_statistics(cfg, shards)
    sample_fn = AudioSample(cfg, mean, std, train)
    if train:
        data = ShardTrainData(shards, sample_fn, cfg)
    else:
        items = decode_all(shards, sample_fn, allow_pickle=cfg.allow_pickle, where=cfg.source)
        labels = torch.stack([it[LABEL] for it in items])
        data = SampleList(items, shards.class_names(int(labels.max())))
    data.normalization = {"field": "fbank", "mean": mean, "std": std}
    return data
