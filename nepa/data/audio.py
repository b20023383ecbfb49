"""Audio: ``audio_folder``, a folder or tar of ``.wav`` / ``.flac`` clips, through the audio SSL
front end that AudioMAE, SSAST and EAT share.

Each clip is read with soundfile, averaged to mono, resampled to ``sample_rate`` with torchaudio
(each source rate is logged once; the audio SSL convention is 16 kHz), its mean removed, and
turned into a Kaldi log-mel filterbank (``torchaudio.compliance.kaldi.fbank``: 128 mel bins,
25 ms window, 10 ms hop, hanning, dither 0, htk_compat, no energy), normalised as
``(fbank - mean) / (2 * std)`` with the train split's statistics (stored in the run directory).
Clips are cropped (training: a seeded random crop; evaluation: the start) or zero-padded to
``target_frames``; ``length`` gives the real frames, so the encoder marks padding.

Split and label come from a naming rule (``nepa.data.shards.naming``; ``fsdd`` for the Free
Spoken Digit Dataset: the official split puts recordings 0-4 in test). ``split_by: speaker``
holds out the speakers in ``test_speakers`` instead. An undecodable or empty clip, and a clip
shorter than ``min_frames``, is skipped, counted and logged, never a crash or a silent zero.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable
from typing import Any, Literal

import numpy as np
import torch
from pydantic import Field, PositiveInt
from torch.utils.data import Dataset

from nepa.batch import LABEL, LABEL_FIELD, Batch, FieldSpec
from nepa.data.base import DATASETS, DataConfig
from nepa.data.cache import load_or_build
from nepa.data.decode import AUDIO_EXTS, DecodeError, decode_audio_bytes
from nepa.data.fbank import MEL_BINS, SAMPLE_RATE, crop_or_pad, front_end
from nepa.data.folder import iter_files
from nepa.data.paths import file_fingerprint, resolve_path, stable_hash
from nepa.data.shards import fsdd as _fsdd  # noqa: F401  (registers the fsdd naming rule)
from nepa.data.shards.naming import NAMING_RULES
from nepa.data.subset import SubsetConfig

log = logging.getLogger(__name__)


class FbankOptions(DataConfig):
    """The front end's settings and the sample every audio reader yields."""

    sample_rate: PositiveInt = SAMPLE_RATE
    mel_bins: PositiveInt = MEL_BINS
    target_frames: PositiveInt = Field(96, description="frames per sample (10 ms each)")
    min_frames: PositiveInt = Field(16, description="shorter clips are skipped and counted")

    @property
    def fields(self) -> dict[str, FieldSpec]:
        return {
            "fbank": FieldSpec((self.target_frames, self.mel_bins)),
            "length": FieldSpec((), "int64"),
            LABEL: LABEL_FIELD,
        }

    def input_transform(self, normalization: dict) -> Callable[[Any], Batch]:
        """(waveform (samples,) or (samples, channels) float, sample rate) -> a sample."""
        mean, std = normalization["mean"], normalization["std"]

        def apply(clip: Any) -> Batch:
            wave, rate = clip
            fb = front_end(
                np.asarray(wave, dtype=np.float32), int(rate), self.sample_rate, self.mel_bins
            )
            return crop_or_pad((fb - mean) / (2 * std), self.target_frames, None)

        return apply


class AudioFolderConfig(SubsetConfig, FbankOptions):
    kind: Literal["audio_folder"] = "audio_folder"
    root: str = "${NEPA_DATA_DIR}/fsdd-recordings.tar.gz"
    naming: str = Field("fsdd", description="the naming rule giving each file's split and label")
    split_by: Literal["rule", "speaker"] = "rule"
    test_speakers: tuple[str, ...] = ("theo",)


def _read(cfg: AudioFolderConfig) -> dict[str, np.ndarray]:
    """Every usable clip's fbank (concatenated), offsets, label, split and speaker."""
    root = resolve_path(cfg.root)
    rule = NAMING_RULES.get(cfg.naming)
    fbanks, labels, splits, speakers, skipped = [], [], [], [], Counter()
    for rel, load in iter_files(root, AUDIO_EXTS):
        named = rule(rel)
        if named is None:
            skipped["not named by the rule"] += 1
            continue
        try:
            wave, rate = decode_audio_bytes(load())
        except DecodeError as e:
            skipped["undecodable"] += 1
            log.warning("audio: skipped %s: %s", rel, e)
            continue
        fb = front_end(wave, rate, cfg.sample_rate, cfg.mel_bins)
        if len(fb) < cfg.min_frames:
            skipped[f"shorter than {cfg.min_frames} frames"] += 1
            continue
        fbanks.append(fb.astype(np.float32))
        labels.append(int(named.label))
        splits.append(named.split)
        speakers.append(str(named.meta.get("speaker", "")))
    if skipped:
        log.warning("audio: %s: skipped %s", root, dict(skipped))
    if not fbanks:
        raise ValueError(f"{root} holds no usable audio clip named by rule {cfg.naming!r}")
    lengths = np.array([len(f) for f in fbanks])
    return {
        "fbank": np.concatenate(fbanks),
        "offsets": np.r_[0, np.cumsum(lengths)],
        "label": np.array(labels, np.int64),
        "split": np.array(splits),
        "speaker": np.array(speakers),
    }


def clips_key(cfg: AudioFolderConfig) -> str:
    """The cache name of a source's clips: its file (or folder) and the front-end settings."""
    root = resolve_path(cfg.root)
    key = stable_hash(
        file_fingerprint(root) if root.is_file() else str(root),
        cfg.naming,
        str(cfg.sample_rate),
        str(cfg.mel_bins),
        str(cfg.min_frames),
        "fbank-v2",  # v2: cached resampling kernel (differences of 1e-7)
    )
    return f"audio-{root.name}-{key}"


def read_clips(cfg: AudioFolderConfig) -> dict[str, np.ndarray]:
    """``_read``, cached as .npy files keyed by the source file and the front-end settings."""
    names = ("fbank", "offsets", "label", "split", "speaker")
    return load_or_build(clips_key(cfg), names, lambda: _read(cfg))


def test_mask(cfg: AudioFolderConfig, clips: dict[str, np.ndarray]) -> np.ndarray:
    """(clips,) bool: the test split, by the naming rule or by held-out speakers."""
    if cfg.split_by == "rule":
        return clips["split"] == "test"
    return np.isin(clips["speaker"], cfg.test_speakers)


_statistics: dict[tuple, tuple[float, float]] = {}


def train_statistics(cfg: AudioFolderConfig, clips: dict[str, np.ndarray]) -> tuple[float, float]:
    """Mean and std of the train split's fbank values, computed once per source and split."""
    key = (clips_key(cfg), cfg.split_by, cfg.test_speakers)
    if key not in _statistics:
        rows = np.repeat(~test_mask(cfg, clips), np.diff(clips["offsets"]))  # per fbank frame
        values = clips["fbank"][rows]
        _statistics[key] = (float(values.mean()), float(values.std()))
    return _statistics[key]


class AudioClips(Dataset):
    """``ds[i]`` or ``ds[(i, aug_seed)]`` -> ``{"fbank", "length", "label"}``."""

    def __init__(self, cfg: AudioFolderConfig, split: str, train: bool) -> None:
        if split not in ("train", "test"):
            raise ValueError(f"audio_folder has the splits 'train' and 'test', not {split!r}")
        c = read_clips(cfg)
        in_test = test_mask(cfg, c)
        idx = np.flatnonzero(in_test if split == "test" else ~in_test)
        idx = idx[cfg.pick(c["label"][idx], split)]
        self.mean, self.std = train_statistics(cfg, c)
        self.normalization = {"field": "fbank", "mean": self.mean, "std": self.std}
        self.cfg, self.train, self.clips, self.idx = cfg, train, c, idx
        self.labels = torch.as_tensor(c["label"][idx])
        self.num_classes = int(c["label"].max()) + 1
        self.speakers = c["speaker"][idx]

    def __len__(self) -> int:
        return len(self.idx)

    def __getitem__(self, key: int | tuple[int, int]) -> Batch:
        index, seed = (key, None) if isinstance(key, int | np.integer) else key
        i = self.idx[index]
        a, b = self.clips["offsets"][i], self.clips["offsets"][i + 1]
        fb = (self.clips["fbank"][a:b] - self.mean) / (2 * self.std)
        sample = crop_or_pad(fb, self.cfg.target_frames, seed if self.train else None)
        return {**sample, LABEL: self.labels[index]}


@DATASETS.register("audio_folder", config=AudioFolderConfig)
def build_audio_folder(cfg: AudioFolderConfig, *, split: str, train: bool) -> AudioClips:
    return AudioClips(cfg, split, train)
