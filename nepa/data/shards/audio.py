"""``audio_shards``: audio clips (``.wav``/``.flac``/``.ogg`` + optional ``.cls``) streamed from
shards through the audio SSL front end, in the loader workers.

Each clip is decoded with soundfile and turned into a normalised, cropped or padded fbank
exactly as ``audio_folder`` does (:mod:`nepa.data.fbank`); a clip shorter than ``min_frames`` is
a counted ``short`` skip. ``mean``/``std`` default to the fbank statistics ``nepa shards write``
stored in the manifest for the train split, used only when they were computed at this config's
sample rate and mel bins.
"""

from __future__ import annotations

import random
from typing import Any, Literal

import numpy as np
import torch
from torch.utils.data import Dataset

from nepa.batch import LABEL, Batch
from nepa.data.audio import FbankOptions
from nepa.data.base import DATASETS
from nepa.data.decode import decode_bytes, exts_of
from nepa.data.fbank import (
    batch_fbank,
    crop_or_pad,
    frames_of,
    kaldi_fbank,
    mono,
    stats_name,
    window_and_hop,
)
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
    """Evaluation: decode, front end, normalise, pad (or cut at the start): a ``{"fbank",
    "length", "label"}`` sample."""

    def __init__(self, cfg: AudioShardsConfig, mean: float, std: float) -> None:
        self.cfg, self.mean, self.std = cfg, mean, std

    def wave(self, sample: dict[str, Any]) -> torch.Tensor:
        """The clip, mono at the config's rate, mean removed; DecodeError (counted) if it is
        undecodable, non-finite or shorter than ``min_frames``."""
        field = payload_field(sample, exts_of("audio"))  # built-in or user-registered extensions
        wave, rate = decode_bytes(field_ext(field), sample[field])
        if not np.isfinite(wave).all():
            raise DecodeError("clip holds non-finite samples", kind="nonfinite")
        x = mono(wave, rate, self.cfg.sample_rate)
        n = frames_of(len(x), self.cfg.sample_rate)
        if n < self.cfg.min_frames:
            raise DecodeError(
                f"clip of {n} frames is shorter than min_frames={self.cfg.min_frames}",
                kind="short",
            )
        return x

    def __call__(self, sample: dict[str, Any], seed: int | None = None) -> Batch:
        x = self.wave(sample)
        fb = kaldi_fbank(x, self.cfg.sample_rate, self.cfg.mel_bins).numpy()
        out = crop_or_pad((fb - self.mean) / (2 * self.std), self.cfg.target_frames, None)
        return {**out, LABEL: torch.tensor(label_of(sample))}

    def finish_batch(self, batch: Batch) -> Batch:
        return batch


class AudioTrainSample(AudioSample):
    """Training, in the loader workers: each clip is cut to the samples of a seeded random
    crop of ``target_frames`` frames (the crop ``crop_or_pad`` draws) and padded; the fbank of
    the whole batch is then computed in one call (:func:`nepa.data.fbank.batch_fbank`), equal
    to each clip's own."""

    def __call__(self, sample: dict[str, Any], seed: int | None = None) -> Batch:
        x = self.wave(sample)
        rate, T = self.cfg.sample_rate, self.cfg.target_frames
        win, hop = window_and_hop(rate)
        n = frames_of(len(x), rate)
        start = random.Random(seed).randint(0, n - T) * hop if n > T else 0
        x = x[start : start + win + (T - 1) * hop]  # the samples of the crop's frames
        out = torch.zeros(win + (T - 1) * hop)
        out[: len(x)] = x
        return {"wave": out, "samples": torch.tensor(len(x)), LABEL: torch.tensor(label_of(sample))}

    def finish_batch(self, batch: Batch) -> Batch:
        fb = batch_fbank(batch["wave"], self.cfg.sample_rate, self.cfg.mel_bins)  # (B, T, F)
        length = frames_of(batch["samples"], self.cfg.sample_rate)  # (B,)
        fb = (fb - self.mean) / (2 * self.std)
        fb[torch.arange(fb.shape[1])[None] >= length[:, None]] = 0.0  # padding, as crop_or_pad
        return {"fbank": fb, "length": length, LABEL: batch[LABEL]}


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
    if train:
        data = ShardTrainData(shards, AudioTrainSample(cfg, mean, std), cfg)
    else:
        sample_fn = AudioSample(cfg, mean, std)
        items = decode_all(shards, sample_fn, allow_pickle=cfg.allow_pickle, where=cfg.source)
        labels = torch.stack([it[LABEL] for it in items])
        data = SampleList(items, shards.class_names(int(labels.max())))
    data.normalization = {"field": "fbank", "mean": mean, "std": std}
    return data
