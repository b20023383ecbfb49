"""NEPA: next-embedding prediction with a stop-gradient target (Xu et al., 2025).

z = encoder(x)                       (B, T, D)   patch embeddings, no position
h = predictor([s, z_1..z_T])         (B, T+1, D) causal, final-normed
p = h[:, :-1]                        outputs at s, z_1..z_{T-1}
t = z.detach()                       THE stop-gradient: only on the target
L = -mean(normalize(p) . normalize(t))
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field

from nepa.encoders.base import Encoder
from nepa.objectives.base import OBJECTIVES, Objective, ObjectiveConfig
from nepa.objectives.monitor import check_collapse, collapse_stats
from nepa.predictor.transformer import Predictor


class NepaConfig(ObjectiveConfig):
    """The NEPA loss and the paper's ablation switches.

    shift=False (predict z_i from the output at z_i itself) is expected to FAIL: the target is
    visible, so the task is trivial. stop_grad=False is expected to COLLAPSE. The third ablation,
    bidirectional attention, is ``predictor.attn=bidirectional`` (expected to degrade).
    """

    kind: Literal["nepa"] = "nepa"
    shift: bool = True
    stop_grad: bool = True
    monitor_every: int = Field(50, ge=0, description="collapse statistics every N steps (0: never)")
    collapse_std: float = Field(0.05, description="warn when std*sqrt(D) falls below this")
    collapse_rank: float = Field(1.5, description="warn when the effective rank falls below this")


def prediction_target(h_BT1D: torch.Tensor, z_BTD: torch.Tensor, shift: bool, stop_grad: bool):
    """Pair each prediction with its target. Returns (p, t), both (B, T, D)."""
    p = h_BT1D[:, :-1] if shift else h_BT1D[:, 1:]
    t = z_BTD.detach() if stop_grad else z_BTD  # stop-gradient on the target path only
    return p, t


def nepa_loss(
    p_BTD: torch.Tensor, t_BTD: torch.Tensor, keep_BT: torch.Tensor | None = None
) -> torch.Tensor:
    """Negative cosine similarity, averaged over batch and (real) positions."""
    cos = (F.normalize(p_BTD.float(), dim=-1) * F.normalize(t_BTD.float(), dim=-1)).sum(
        -1
    )  # (B, T)
    if keep_BT is None:
        return -cos.mean()
    keep = keep_BT.to(cos.dtype)
    return -(cos * keep).sum() / keep.sum().clamp_min(1.0)


@OBJECTIVES.register("nepa", config=NepaConfig)
class Nepa(Objective):
    def __init__(self, cfg: NepaConfig, *, encoder: Encoder, predictor: Predictor) -> None:
        super().__init__()
        self.cfg = cfg
        self.encoder = encoder
        self.predictor = predictor
        self._last_p: torch.Tensor | None = None

    def forward(self, x) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        tok = self.encoder(x)
        h = self.predictor(tok.emb, tok.coords, tok.grid, tok.keep)
        p, t = prediction_target(h, tok.emb, self.cfg.shift, self.cfg.stop_grad)
        loss = nepa_loss(p, t, tok.keep)
        self._last_p = p.detach()
        return loss, {"loss": loss.detach(), "tokens": float(p.shape[0] * p.shape[1])}

    def monitor(self, step: int) -> dict[str, float]:
        """Every ``monitor_every`` steps: collapse statistics of the last forward's predictions,
        with a loud warning when they look collapsed."""
        every = self.cfg.monitor_every
        if not every or step % every or self._last_p is None:
            return {}
        stats = collapse_stats(self._last_p)
        check_collapse(stats, step, self.cfg.collapse_std, self.cfg.collapse_rank)
        return stats

    @torch.no_grad()
    def features(self, x, *, layers: list[int], attn: str | None = None):
        tok = self.encoder(x)
        outs = self.predictor(
            tok.emb, tok.coords, tok.grid, tok.keep, attn=attn, return_layers=layers
        )
        # (B, T, D) patch-token outputs per layer, the tokens, and the start token's (B, D)
        return [o[:, 1:] for o in outs], tok, [o[:, 0] for o in outs]
