"""The discrete next-token baseline (iGPT, Emu3): the same causal predictor and scan orders over
codes of the encoder's raw patches, an embedding table in, a linear head out, cross-entropy.

ids = codebook(encoder.patches(x))    (B, T) the nearest k-means code of each patch
h = predictor([s, E[ids]])            causal, final-normed
L = cross_entropy(head(h[:, :-1]), ids)    the output at s, t_1..t_{T-1} predicts t_1..t_T

The codebook is a buffer of the objective, so checkpoints, resume and evaluation use the same
codes. It is read from ``objective.tokenizer`` (a file from ``nepa tokenizer fit``) or, if none
is given, fitted by k-means at the start of a fresh run (:meth:`TokenObjective.fit`). Features
for evaluation are the predictor's outputs over the code embeddings, like NEPA's.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field, PositiveInt
from torch import nn

from nepa.batch import Batch, to_device
from nepa.encoders.base import Encoder
from nepa.objectives.backbone import TokenBackbone
from nepa.objectives.base import OBJECTIVES, Objective, ObjectiveConfig
from nepa.objectives.monitor import CollapseMonitor
from nepa.objectives.tokenizer import Tokenizer, fit_codebook, nearest
from nepa.predictor.transformer import Predictor
from nepa.tokens import Tokens

log = logging.getLogger(__name__)


class TokenConfig(ObjectiveConfig):
    kind: Literal["token"] = "token"
    codes: PositiveInt = Field(1024, description="codebook size (iGPT's palette: 512)")
    tokenizer: str | None = Field(None, description="a `nepa tokenizer fit` file; None: fit one")
    fit_samples: PositiveInt = Field(2000, description="training samples the codebook sees")
    fit_points: PositiveInt = Field(100_000, description="at most this many patches, seeded")
    kmeans_iters: PositiveInt = 20
    fit_seed: int = 0
    monitor_every: int = Field(50, ge=0)
    collapse_std: float = Field(0.05, ge=0)
    collapse_rank: float = Field(1.5, ge=0)


class CodeEmbedding(Encoder):
    """The backbone's input: each raw patch -> its nearest code -> a learned embedding. The
    patch encoder only cuts patches (its projection is unused, frozen)."""

    def __init__(self, patcher: Encoder, codes: int, dim: int) -> None:
        super().__init__()
        self.patcher = patcher.requires_grad_(False)
        self.grid, self.n_axes = patcher.grid, patcher.n_axes
        self.register_buffer("codebook", torch.zeros(codes, patcher.patch_dim))
        self.register_buffer("fitted", torch.tensor(False))
        self.embed = nn.Embedding(codes, dim)
        nn.init.normal_(self.embed.weight, std=0.02)

    def codes(self, batch: Batch) -> tuple[torch.Tensor, Tokens]:
        """(B, T) codes, and the raw patches' Tokens."""
        if not bool(self.fitted):
            raise RuntimeError("the token objective's codebook was never fitted or loaded")
        raw = self.patcher.patches(batch)
        flat = raw.emb.reshape(-1, raw.emb.shape[-1]).float()
        return nearest(flat, self.codebook).reshape(raw.emb.shape[:2]), raw

    def forward(self, batch: Batch) -> Tokens:
        ids, raw = self.codes(batch)
        return Tokens(emb=self.embed(ids), coords=raw.coords, grid=raw.grid, keep=raw.keep)


@OBJECTIVES.register("token", config=TokenConfig)
class TokenObjective(Objective):
    def __init__(self, cfg: TokenConfig, *, encoder: Encoder, predictor: Predictor) -> None:
        super().__init__()
        self.cfg = cfg
        if not hasattr(encoder, "patch_dim"):
            raise ValueError(
                f"encoder {type(encoder).__name__} does not give raw patches (no patch_dim and "
                "patches()): the token objective needs them"
            )
        self.meta = {
            "codes": cfg.codes,
            "patch_dim": int(encoder.patch_dim),
            "encoder": type(encoder).__name__,
            "grid": list(encoder.grid),
        }
        self.encoder = CodeEmbedding(encoder, cfg.codes, predictor.dim)
        self.predictor = predictor
        self.head = nn.Linear(predictor.dim, cfg.codes)
        self.collapse = CollapseMonitor(cfg.monitor_every, cfg.collapse_std, cfg.collapse_rank)
        if cfg.tokenizer is not None:
            self.set_tokenizer(Tokenizer.load(cfg.tokenizer, self.meta))

    def set_tokenizer(self, tokenizer: Tokenizer) -> None:
        self.encoder.codebook.copy_(tokenizer.codebook)
        self.encoder.fitted.fill_(True)

    def tokenizer(self) -> Tokenizer:
        return Tokenizer(self.encoder.codebook.detach().cpu(), self.meta)

    @torch.no_grad()
    def fit(self, samples: Callable[[int, int], Iterator[Batch]]) -> None:
        """k-means over the raw patches of ``fit_samples`` training samples (at most
        ``fit_points`` of them, a seeded subset), unless a tokenizer file was given."""
        if bool(self.encoder.fitted):
            return
        rows, device = [], self.encoder.codebook.device
        for batch in samples(self.cfg.fit_samples, self.cfg.fit_seed):
            raw = self.encoder.patcher.patches(to_device(batch, device))
            x = raw.emb if raw.keep is None else raw.emb[raw.keep]
            rows.append(x.reshape(-1, x.shape[-1]).float())
        x = torch.cat(rows)
        g = torch.Generator().manual_seed(self.cfg.fit_seed)
        if len(x) > self.cfg.fit_points:
            x = x[torch.randperm(len(x), generator=g)[: self.cfg.fit_points]]
        log.info(
            "token: fitting a codebook of %d codes to %d patches of %d values",
            self.cfg.codes,
            len(x),
            x.shape[1],
        )
        codebook = fit_codebook(x, self.cfg.codes, self.cfg.kmeans_iters, self.cfg.fit_seed)
        self.set_tokenizer(Tokenizer(codebook, self.meta))

    def forward(self, batch: Batch) -> tuple[torch.Tensor, dict[str, torch.Tensor | float]]:
        ids, raw = self.encoder.codes(batch)
        emb = self.encoder.embed(ids)
        h = self.predictor(emb, raw.coords, raw.grid, raw.keep)
        if self.predictor.has_start_token:  # s, t_1..t_{T-1} predict t_1..t_T
            p, target, keep = h[:, :-1], ids, raw.keep
        else:  # t_1..t_{T-1} predict t_2..t_T
            p, target = h[:, :-1], ids[:, 1:]
            keep = None if raw.keep is None else raw.keep[:, 1:]
        logits = self.head(p).float()  # (B, T', K)
        ce = F.cross_entropy(logits.transpose(1, 2), target, reduction="none")  # (B, T')
        right = (logits.argmax(-1) == target).float()
        w = torch.ones_like(ce) if keep is None else keep.float()
        n = w.sum().clamp_min(1.0)
        self.collapse.observe(p, keep)
        return (ce * w).sum() / n, {"tokens": n.detach(), "accuracy": (right * w).sum() / n}

    def monitor(self, step: int) -> dict[str, float]:
        return self.collapse(step)

    def no_weight_decay(self) -> set[str]:
        return self.backbone().no_weight_decay()

    def backbone(self) -> TokenBackbone:
        return TokenBackbone(self.encoder, self.predictor)
