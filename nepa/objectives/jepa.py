"""JEPA (I-JEPA, V-JEPA): predict the target encoder's embeddings of masked blocks from a
visible context, in latent space, on any grid.

z = encoder(x)                      (B, T, D) tokens of the whole input (scan order)
c = context(z[context cells])       the predictor class, bidirectional, no start token, over
                                    the visible tokens at their own coordinates
p = narrow([c, mask tokens at the target cells])[targets]    a narrower, shallower predictor
t = layer_norm(EMA target(z))[targets]   no gradient; the EMA copy never meets the optimizer
L = smooth_l1(p, t)                 per sample over its target tokens, then over samples

Masks (:mod:`nepa.objectives.masks`): 2-D grids get I-JEPA's target blocks and context block,
3-D grids V-JEPA's short- and long-range tubes (the context is the complement; the loss averages
the two mask sets), 1-D grids spans along time. Block sizes come from a generator seeded by the
step (``on_step_start``), locations from one per global sample (``on_micro_batch``), so DDP
splits, accumulation and resume see the same masks. The EMA momentum ramps from
``momentum[0]`` to ``momentum[1]`` over the run (``on_train_start`` gives its length) and is
applied right after each optimizer step with ``torch._foreach`` ops (``on_step_end``).
"""

from __future__ import annotations

import copy
import math
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field, PositiveInt, model_validator
from torch import nn

from nepa.batch import Batch
from nepa.encoders.base import Encoder
from nepa.objectives.backbone import TokenBackbone
from nepa.objectives.base import OBJECTIVES, Objective, ObjectiveConfig
from nepa.objectives.masks import (
    BlockSpec,
    Masks,
    check_blocks,
    complement_context,
    context_and_targets,
)
from nepa.objectives.monitor import CollapseMonitor
from nepa.predictor.transformer import Predictor
from nepa.tokens import Tokens


class JepaConfig(ObjectiveConfig):
    kind: Literal["jepa"] = "jepa"
    # I-JEPA (2-D grids) and spans (1-D grids; the time axis of other grids with masks=spans)
    targets: PositiveInt = 4
    target_scale: tuple[float, float] = (0.15, 0.2)
    target_aspect: tuple[float, float] = (0.75, 1.5)
    context_scale: tuple[float, float] = (0.85, 1.0)
    min_keep: PositiveInt = Field(10, description="fewest context tokens a sample may keep")
    # V-JEPA (3-D grids): tubes spanning all time, the context is the complement
    short_blocks: PositiveInt = 8
    short_scale: float = Field(0.15, gt=0, lt=1)
    long_blocks: PositiveInt = 2
    long_scale: float = Field(0.7, gt=0, lt=1)
    masks: Literal["auto", "blocks", "tubes", "spans"] = Field(
        "auto", description="auto: spans on 1-D grids, blocks on 2-D, tubes on 3-D"
    )
    time_axis: int = Field(
        0,
        ge=0,
        description="the grid axis that is time: spans run along it, tubes through it "
        "(0 for spectrograms and video; 1 for channel-independent sensor grids)",
    )
    predictor_depth: PositiveInt = 6
    predictor_dim: PositiveInt | None = Field(None, description="None: half the encoder's width")
    predictor_heads: PositiveInt | None = Field(None, description="None: the encoder's heads")
    momentum: tuple[float, float] = Field((0.996, 1.0), description="EMA momentum, start -> end")
    loss: Literal["smooth_l1", "l1", "l2"] = "smooth_l1"
    features_from: Literal["target", "context"] = "target"
    var_weight: float = Field(0.0, ge=0, description="weight of a variance hinge on predictions")
    monitor_every: int = Field(50, ge=0)
    collapse_std: float = Field(0.05, ge=0)
    collapse_rank: float = Field(1.5, ge=0)

    @model_validator(mode="after")
    def _check(self) -> JepaConfig:
        for name in ("target_scale", "context_scale", "target_aspect", "momentum"):
            lo, hi = getattr(self, name)
            if (
                not 0 < lo <= hi
                or (name.endswith("scale") and hi > 1)
                or (name == "momentum" and hi > 1)
            ):
                raise ValueError(f"{name}={[lo, hi]} must be (lo, hi) with 0 < lo <= hi (<= 1)")
        return self

    def mask_kind(self, grid: tuple[int, ...]) -> str:
        if self.masks != "auto":
            return self.masks
        if not 1 <= len(grid) <= 3:
            raise ValueError(f"masks=auto knows 1-, 2- and 3-axis grids, not {grid}: set masks")
        return {1: "spans", 2: "blocks", 3: "tubes"}[len(grid)]

    def block_specs(self, grid: tuple[int, ...]) -> list[tuple[BlockSpec, BlockSpec | None]]:
        """(targets, context) per mask set; context None: the complement of the targets."""
        kind = self.mask_kind(grid)
        t = self.time_axis
        if t >= len(grid):
            raise ValueError(f"time_axis={t} is not an axis of the grid {grid}")
        if kind == "tubes":
            if len(grid) < 2:
                raise ValueError(f"tubes need a grid of 2+ axes, got {grid}")
            rest = len(grid) - 1
            aspect = self.target_aspect if rest == 2 else (1.0, 1.0)
            return [
                (BlockSpec(self.short_blocks, (self.short_scale,) * 2, aspect, (t,)), None),
                (BlockSpec(self.long_blocks, (self.long_scale,) * 2, aspect, (t,)), None),
            ]
        if kind == "spans":
            full = tuple(a for a in range(len(grid)) if a != t)  # every axis but time
            return [
                (
                    BlockSpec(self.targets, self.target_scale, full_axes=full),
                    BlockSpec(1, self.context_scale, full_axes=full),
                )
            ]
        if len(grid) != 2:
            raise ValueError(
                f"masks=blocks places 2-D blocks; the grid {grid} has {len(grid)} axes"
            )
        return [
            (
                BlockSpec(self.targets, self.target_scale, self.target_aspect),
                BlockSpec(1, self.context_scale),
            )
        ]

    def check_grid(self, grid: tuple[int, ...]) -> None:
        for targets, context in self.block_specs(grid):
            check_blocks(grid, targets, context, self.min_keep)


def sample_seed(step_seed: int, index: int) -> int:
    """The seed of global sample ``index``'s masks at a step: distinct for every (step, index)
    pair and within a generator's seed range, whatever the run seed."""
    return int(np.random.SeedSequence([step_seed, index]).generate_state(1, np.uint64)[0])


def regression_loss(kind: str, p: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Elementwise loss averaged over the feature dim: (..., D) -> (...)."""
    if kind == "smooth_l1":
        return F.smooth_l1_loss(p, t, reduction="none").mean(-1)
    if kind == "l1":
        return (p - t).abs().mean(-1)
    return ((p - t) ** 2).mean(-1)


def _gather(x_BTD: torch.Tensor, pos_BK: torch.Tensor) -> torch.Tensor:
    return torch.gather(x_BTD, 1, pos_BK[..., None].expand(-1, -1, x_BTD.shape[-1]))


@OBJECTIVES.register("jepa", config=JepaConfig)
class Jepa(Objective):
    def __init__(self, cfg: JepaConfig, *, encoder: Encoder, predictor: Predictor) -> None:
        super().__init__()
        if not hasattr(encoder, "grid"):
            raise ValueError(
                f"encoder {type(encoder).__name__} has no token grid: JEPA places its masks on it"
            )
        if predictor.cfg.attn != "bidirectional" or predictor.has_start_token:
            raise ValueError(
                "objective 'jepa' needs a bidirectional context encoder without a start token: "
                "set predictor.attn=bidirectional and predictor.start_token=false"
            )
        cfg.check_grid(tuple(encoder.grid))
        self.cfg, self.grid = cfg, tuple(encoder.grid)
        self.encoder, self.predictor = encoder, predictor  # the context encoder
        self.target_encoder = copy.deepcopy(encoder).requires_grad_(False)
        self.target_predictor = copy.deepcopy(predictor).requires_grad_(False)
        dim = predictor.dim
        width = cfg.predictor_dim or dim // 2
        heads = cfg.predictor_heads or predictor.heads
        narrow = predictor.cfg.model_copy(
            update={"dim": width, "depth": cfg.predictor_depth, "heads": heads, "drop_path": 0.0}
        )
        narrow = type(predictor.cfg).model_validate(narrow.model_dump())  # validated
        self.narrow = Predictor(narrow, n_axes=len(self.grid))
        self.narrow_in = nn.Linear(dim, width)
        self.narrow_out = nn.Linear(width, dim)
        self.mask_token = nn.Parameter(torch.zeros(width))
        nn.init.trunc_normal_(self.mask_token, std=0.02)
        self.specs = cfg.block_specs(self.grid)
        self.collapse = CollapseMonitor(cfg.monitor_every, cfg.collapse_std, cfg.collapse_rank)
        self.total_steps, self.step_seed, self.first = 1, 0, 0

    # -- lifecycle -----------------------------------------------------------------------------
    def on_train_start(self, total_steps: int) -> None:
        self.total_steps = total_steps

    def on_step_start(self, step: int, seed: int) -> None:
        self.step_seed = seed
        self.predictor.set_step_seed(seed)
        self.narrow.set_step_seed(seed)

    def on_micro_batch(self, first: int) -> None:
        self.first = first

    def momentum_at(self, step: int) -> float:
        lo, hi = self.cfg.momentum
        return lo + (hi - lo) * min(step, self.total_steps) / self.total_steps

    @torch.no_grad()
    def on_step_end(self, step: int) -> None:
        m = self.momentum_at(step)
        live = [*self.encoder.parameters(), *self.predictor.parameters()]
        ema = [*self.target_encoder.parameters(), *self.target_predictor.parameters()]
        torch._foreach_mul_(ema, m)
        torch._foreach_add_(ema, live, alpha=1 - m)

    def train(self, mode: bool = True) -> Jepa:
        super().train(mode)
        self.target_encoder.eval()  # the EMA copy is never in training mode
        self.target_predictor.eval()
        return self

    # -- forward -------------------------------------------------------------------------------
    def draw_masks(self, batch: int, extents: list[tuple[int, ...]] | None = None) -> list[Masks]:
        """One Masks per mask set; ``extents`` (one box per sample, see
        :mod:`nepa.objectives.masks`) keeps a padded sample's masks on its real cells."""
        shape_gen = torch.Generator().manual_seed(self.step_seed)
        gens = [
            torch.Generator().manual_seed(sample_seed(self.step_seed, self.first + i))
            for i in range(batch)
        ]
        out = []
        for targets, context in self.specs:
            if context is None:
                out.append(
                    complement_context(
                        self.grid, shape_gen, gens, targets, self.cfg.min_keep, extents
                    )
                )
            else:
                out.append(
                    context_and_targets(
                        self.grid, shape_gen, gens, targets, context, self.cfg.min_keep, extents
                    )
                )
        return out

    @staticmethod
    def extents(coords: torch.Tensor, keep: torch.Tensor | None) -> list[tuple[int, ...]] | None:
        """Per sample, the box [0, e) on every grid axis that holds its real tokens (None when
        nothing is padded): coords (B, T, A), keep (B, T)."""
        if keep is None or bool(keep.all()):
            return None
        ext = torch.where(keep[..., None], coords + 1, 0).amax(1).clamp_min(1)  # (B, A)
        return [tuple(e) for e in ext.tolist()]

    def positions(self, tok: Tokens) -> torch.Tensor:
        """(T,) or (B, T): the token position of each row-major cell (the inverse scan)."""
        strides = torch.tensor([math.prod(self.grid[a + 1 :]) for a in range(len(self.grid))])
        cell = (tok.coords * strides.to(tok.coords.device)).sum(-1)  # row-major cell per token
        return torch.argsort(cell, dim=-1)

    def forward(self, batch: Batch) -> tuple[torch.Tensor, dict[str, torch.Tensor | float]]:
        tok = self.encoder(batch)
        B, T, D = tok.emb.shape
        pos = self.positions(tok).expand(B, T) if tok.coords.ndim == 2 else self.positions(tok)
        coords = tok.coords.expand(B, T, -1) if tok.coords.ndim == 2 else tok.coords
        with torch.no_grad():
            t_tok = self.target_encoder(batch)
            h = self.target_predictor(t_tok.emb, t_tok.coords, t_tok.grid, t_tok.keep)
            target_all = F.layer_norm(h.float(), (D,))  # (B, T, D), no affine
        real = (
            torch.ones(B, T, dtype=torch.bool, device=tok.emb.device)
            if tok.keep is None
            else tok.keep
        )
        losses, preds, usable = [], [], []
        for m in self.draw_masks(B, self.extents(coords, tok.keep)):
            m = m.to(tok.emb.device)
            c_pos = torch.gather(pos, 1, m.context)  # (B, Kc) token positions
            c_keep = m.context_keep & torch.gather(real, 1, c_pos)
            ctx = self.predictor(
                _gather(tok.emb, c_pos),
                torch.gather(coords, 1, c_pos[..., None].expand(-1, -1, coords.shape[-1])),
                tok.grid,
                c_keep,
            )
            N, Kt = m.targets.shape[1:]
            t_pos = torch.gather(pos, 1, m.targets.reshape(B, -1)).reshape(B, N, Kt)
            t_keep = m.targets_keep & torch.gather(real, 1, t_pos.reshape(B, -1)).reshape(B, N, Kt)
            p = self.predict(ctx, c_pos, c_keep, t_pos, t_keep, coords, tok.grid)  # (B, N, Kt, D)
            t = _gather(target_all, t_pos.reshape(B, -1)).reshape(B, N, Kt, D)
            err = regression_loss(self.cfg.loss, p.float(), t)  # (B, N, Kt)
            w = t_keep.float()
            per_sample = (err * w).sum((1, 2)) / w.sum((1, 2)).clamp_min(1.0)  # (B,)
            # Masks lie in each sample's real extent; a sample too short for min_keep context
            # cells adds nothing, and the sum is over the micro-batch's B samples, so every
            # split of the global batch gives one loss.
            valid = (m.usable & t_keep.flatten(1).any(1) & c_keep.any(1)).float()
            losses.append((per_sample * valid).sum() / B)
            usable.append(valid.mean())
            preds.append(p[t_keep])
        loss = torch.stack(losses).mean()
        p_all = torch.cat(preds)  # (n, D) real predictions
        metrics: dict[str, torch.Tensor | float] = {
            "tokens": float(real.sum()),
            "jepa/usable": torch.stack(usable).mean().detach(),  # share of samples in the loss
        }
        if self.cfg.var_weight:
            var = F.relu(1.0 - torch.sqrt(p_all.float().var(0) + 1e-4)).mean()
            loss = loss + self.cfg.var_weight * var
            metrics["var_hinge"] = var.detach()
        self.collapse.observe(p_all[:, None], None)  # (N, 1, D): one row per prediction
        return loss, metrics

    def predict(self, ctx, c_pos, c_keep, t_pos, t_keep, coords, grid) -> torch.Tensor:
        """The narrow predictor, once per target block: [context, mask tokens at the block's
        coordinates] -> predictions at the mask tokens, (B, N, Kt, D)."""
        B, Kc, _ = ctx.shape
        N, Kt = t_pos.shape[1:]
        A = coords.shape[-1]
        c_in = self.narrow_in(ctx)  # (B, Kc, W)
        c_coords = torch.gather(coords, 1, c_pos[..., None].expand(-1, -1, A))
        x = torch.cat(
            [c_in[:, None].expand(-1, N, -1, -1), self.mask_token.expand(B, N, Kt, -1)], 2
        ).reshape(B * N, Kc + Kt, -1)
        t_coords = torch.gather(coords, 1, t_pos.reshape(B, -1, 1).expand(-1, -1, A)).reshape(
            B, N, Kt, A
        )
        xc = torch.cat([c_coords[:, None].expand(-1, N, -1, -1), t_coords], 2).reshape(
            B * N, Kc + Kt, A
        )
        keep = torch.cat([c_keep[:, None].expand(-1, N, -1), t_keep], 2).reshape(B * N, Kc + Kt)
        out = self.narrow(x, xc, grid, keep)[:, Kc:]  # (B*N, Kt, W)
        return self.narrow_out(out).reshape(B, N, Kt, -1)

    # -- evaluation ----------------------------------------------------------------------------
    def monitor(self, step: int) -> dict[str, float]:
        return self.collapse(step)

    def no_weight_decay(self) -> set[str]:
        return {"mask_token"}

    def backbone(self) -> TokenBackbone:
        if self.cfg.features_from == "target":
            return TokenBackbone(self.target_encoder, self.target_predictor)
        return TokenBackbone(self.encoder, self.predictor)
