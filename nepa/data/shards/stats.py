"""Dataset statistics that ``nepa shards write`` computes per split and stores in the manifest.

Each modality says which values of a decoded payload its readers normalise by, as a
``(channels, values)`` float64 array, and names them (``SplitInfo.stats``), so a reader uses
stored statistics only when they are the ones it needs:

- ``image``: pixels scaled to [0, 1], per channel;
- ``array``: the raw values per leading axis (a sensor window ``(C, L)``: per channel);
  non-finite arrays (and audio clips) are left out and counted (readers skip them);
- ``audio``: the values of the audio SSL fbank at 16 kHz and 128 mel bins, one channel
  (AudioMAE's ``(fbank - mean) / (2 * std)``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from nepa.data.fbank import MEL_BINS, SAMPLE_RATE, front_end, stats_name

log = logging.getLogger(__name__)

PIXELS = "pixels / 255 per channel"
ARRAY_VALUES = "values per leading axis"


def _pixels(img_CHW: torch.Tensor) -> torch.Tensor:
    return img_CHW.reshape(img_CHW.shape[0], -1).to(torch.float64) / 255.0


def _array(arr: np.ndarray) -> torch.Tensor | None:
    x = torch.from_numpy(np.asarray(arr, dtype=np.float64))
    if not torch.isfinite(x).all():
        return None
    return x.reshape(1, -1) if x.ndim < 2 else x.reshape(x.shape[0], -1)


def _fbank(decoded: tuple[np.ndarray, int]) -> torch.Tensor | None:
    wave, rate = decoded
    if not np.isfinite(wave).all():
        return None  # readers skip it ("nonfinite"); one NaN would poison every other clip
    fb = front_end(wave, rate, SAMPLE_RATE, MEL_BINS)
    return torch.from_numpy(fb).reshape(1, -1).to(torch.float64)


#: modality -> (name stored in the manifest, decoded payload -> (C, N) values or None to skip)
STATISTICS: dict[str, tuple[str, Callable[..., torch.Tensor | None]]] = {
    "image": (PIXELS, _pixels),
    "array": (ARRAY_VALUES, _array),
    "audio": (stats_name(SAMPLE_RATE, MEL_BINS), _fbank),
}


@dataclass
class RunningStats:
    """Per-channel running mean and std (float64 sums) of one split's payloads."""

    modality: str
    n: int = 0
    sums: torch.Tensor | None = None  # (C,) float64
    sums2: torch.Tensor | None = None
    mixed: bool = False  # payloads with different channel counts: no statistics
    left_out: int = 0  # payloads not counted (non-finite arrays)

    def add(self, payload) -> None:
        if self.modality not in STATISTICS or self.mixed:
            return
        values = STATISTICS[self.modality][1](payload)
        if values is None:
            self.left_out += 1
            return
        if self.sums is None:
            self.sums = torch.zeros(len(values), dtype=torch.float64)
            self.sums2 = torch.zeros(len(values), dtype=torch.float64)
        if len(self.sums) != len(values):
            self.mixed = True
            return
        self.sums += values.sum(1)
        self.sums2 += (values**2).sum(1)
        self.n += values.shape[1]

    def result(self) -> tuple[list[float] | None, list[float] | None, str | None]:
        """(mean, std, what they are) or Nones when nothing could be computed."""
        if self.left_out:
            log.warning(
                "%d sample(s) hold non-finite values: left out of the statistics (readers skip "
                "them and count them as 'nonfinite')",
                self.left_out,
            )
        if self.mixed:
            log.warning(
                "samples of this split have different channel counts: no mean/std in the "
                "manifest (set data.mean/std in the config)"
            )
            return None, None, None
        if self.sums is None or self.sums2 is None or not self.n:
            return None, None, None
        m = self.sums / self.n
        s = torch.sqrt(torch.clamp(self.sums2 / self.n - m**2, min=0.0))
        return m.tolist(), s.tolist(), STATISTICS[self.modality][0]
