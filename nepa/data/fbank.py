"""The audio SSL front end (AudioMAE, SSAST and EAT agree) and how a clip is cropped or padded.

One function for every reader (the audio folder, the audio shards and the statistics
``nepa shards write`` stores): a waveform averaged to mono, resampled to ``sample_rate`` with
torchaudio (each source rate logged once per process), its mean removed, and a Kaldi log-mel
filterbank: ``torchaudio.compliance.kaldi.fbank`` with 25 ms windows every 10 ms, hanning, dither
0, htk_compat, no energy.
"""

from __future__ import annotations

import logging
import random
from functools import lru_cache

import numpy as np
import torch
import torchaudio

from nepa.batch import Batch

log = logging.getLogger(__name__)

SAMPLE_RATE = 16000  # the audio SSL convention
MEL_BINS = 128
WINDOW_MS = 25

_logged_rates: set[int] = set()


@lru_cache(maxsize=16)
def resampler(rate: int, sample_rate: int) -> torchaudio.transforms.Resample:
    """torchaudio's resampler from ``rate`` to ``sample_rate``, its sinc kernel built once per
    pair of rates and process (``functional.resample`` rebuilds it for every clip)."""
    return torchaudio.transforms.Resample(rate, sample_rate)


def front_end(
    wave: np.ndarray, rate: int, sample_rate: int = SAMPLE_RATE, mel_bins: int = MEL_BINS
) -> np.ndarray:
    """Waveform ``(samples,)`` or ``(samples, channels)`` -> log-mel fbank ``(frames, bins)``;
    a clip shorter than one 25 ms window has no frames (readers skip it and count it)."""
    x = torch.from_numpy(wave if wave.ndim == 1 else wave.mean(1))
    if rate != sample_rate:
        if rate not in _logged_rates:
            log.info("audio: resampling %d Hz clips to %d Hz", rate, sample_rate)
            _logged_rates.add(rate)
        x = resampler(rate, sample_rate)(x)
    if len(x) < sample_rate * WINDOW_MS // 1000:  # not one whole window: no frames
        return np.zeros((0, mel_bins), np.float32)
    x = x - x.mean()
    fb = torchaudio.compliance.kaldi.fbank(
        x[None],
        htk_compat=True,
        sample_frequency=sample_rate,
        use_energy=False,
        window_type="hanning",
        num_mel_bins=mel_bins,
        dither=0.0,
        frame_shift=10,
    )
    return fb.numpy()


def stats_name(sample_rate: int, mel_bins: int) -> str:
    """What a manifest's mean/std describe when they are fbank statistics at these settings."""
    return f"fbank {sample_rate} Hz {mel_bins} mel bins"


def crop_or_pad(fb: np.ndarray, frames: int, seed: int | None) -> Batch:
    """``{"fbank": (frames, bins), "length": real frames}``: a crop (random when ``seed`` is
    given, else the start) of a longer clip, zeros after a shorter one."""
    n = len(fb)
    if n > frames:
        start = random.Random(seed).randint(0, n - frames) if seed is not None else 0
        fb, n = fb[start : start + frames], frames
    out = np.zeros((frames, fb.shape[1]), np.float32)
    out[:n] = fb
    return {"fbank": torch.from_numpy(out), "length": torch.tensor(n)}
