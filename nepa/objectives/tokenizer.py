"""A discrete tokenizer for the next-token baseline: k-means codes of the encoder's raw patches.

iGPT's palette is k-means (k=512) over pixels: patches of one pixel. Over larger patches of any
modality the patch encoders cut (images, spectrograms, sensor windows, tubelets) the codebook
clusters normalised patch values, one token per patch (k=1024 by default). The codebook is
fitted on training data (:func:`fit_codebook`), saved as safetensors with what it was fitted
for (:meth:`Tokenizer.save`), and checked against the run that loads it.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

log = logging.getLogger(__name__)


def _sq_dists(x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """(N, K) squared distances, without the (N, K, P) difference tensor."""
    return (x * x).sum(1, keepdim=True) - 2 * x @ c.T + (c * c).sum(1)[None]


def nearest(x_NP: torch.Tensor, codebook_KP: torch.Tensor, chunk: int = 65536) -> torch.Tensor:
    """(N,) index of the nearest code of each row, in fp32 whatever autocast is active (bf16
    distances pick another code for about 1.6% of patches)."""
    x, c = x_NP.float(), codebook_KP.float()
    with torch.autocast(x.device.type, enabled=False):
        return torch.cat(
            [_sq_dists(x[i : i + chunk], c).argmin(1) for i in range(0, len(x), chunk)]
        )


def fit_codebook(x_NP: torch.Tensor, k: int, iters: int = 20, seed: int = 0) -> torch.Tensor:
    """k-means (k-means++ seeding, then Lloyd iterations) of the rows: a (k, P) codebook.
    An empty cluster takes the point farthest from its code, so every code is used."""
    x = x_NP.float()
    if len(x) < k:
        raise ValueError(f"{len(x)} patches cannot make a codebook of {k} codes: fit on more data")
    g = torch.Generator().manual_seed(seed)
    codes = x[torch.randint(len(x), (1,), generator=g)]
    d = _sq_dists(x, codes)[:, 0].clamp_min(0)
    for _ in range(1, k):  # k-means++: each next code drawn with probability ~ distance^2
        i = torch.multinomial(d + 1e-12, 1, generator=g)
        codes = torch.cat([codes, x[i]])
        d = torch.minimum(d, _sq_dists(x, x[i])[:, 0].clamp_min(0))
    for _ in range(iters):
        assign = nearest(x, codes)
        sums = torch.zeros_like(codes).index_add_(0, assign, x)
        counts = torch.bincount(assign, minlength=k)
        empty = counts == 0
        codes = torch.where(empty[:, None], codes, sums / counts.clamp_min(1)[:, None])
        if empty.any():
            far = _sq_dists(x, codes).min(1).values.topk(int(empty.sum())).indices
            codes[empty] = x[far]
    return codes


class Tokenizer:
    """A codebook ``(K, P)`` and what it was fitted for (``meta``: encoder kind, patch size,
    number of codes)."""

    def __init__(self, codebook: torch.Tensor, meta: dict) -> None:
        self.codebook, self.meta = codebook.float().contiguous(), dict(meta)

    @property
    def size(self) -> int:
        return len(self.codebook)

    @property
    def patch_dim(self) -> int:
        return self.codebook.shape[1]

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """(..., P) patch values -> (...) int64 codes."""
        flat = x.reshape(-1, x.shape[-1]).float()
        return nearest(flat, self.codebook.to(x.device)).reshape(x.shape[:-1])

    def save(self, path: str | os.PathLike[str]) -> None:
        save_file(
            {"codebook": self.codebook},
            str(path),
            metadata={"nepa_tokenizer": json.dumps(self.meta)},
        )

    @classmethod
    def load(cls, path: str | os.PathLike[str], expect: dict) -> Tokenizer:
        """Read a tokenizer file; ValueError naming the file and the mismatch if it was fitted
        for something else than ``expect`` (codebook size, patch dim, encoder...)."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(
                f"tokenizer file {path} does not exist: fit one with `nepa tokenizer fit`"
            )
        from safetensors import safe_open

        with safe_open(str(path), "pt") as f:
            meta = json.loads((f.metadata() or {}).get("nepa_tokenizer", "null") or "null")
        if meta is None:
            raise ValueError(f"{path} is not a nepa tokenizer (no nepa_tokenizer metadata)")
        codebook = load_file(str(path))["codebook"]
        wrong = {k: (meta.get(k), v) for k, v in expect.items() if meta.get(k) != v}
        if wrong:
            what = ", ".join(f"{k}: file {a!r}, run {b!r}" for k, (a, b) in wrong.items())
            raise ValueError(f"tokenizer {path} does not match this run ({what}): fit one for it")
        return cls(codebook, meta)
