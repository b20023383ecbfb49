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

from nepa.batch import Batch
from nepa.encoders.base import Encoder
from nepa.objectives.backbone import TokenBackbone
from nepa.objectives.base import OBJECTIVES, Objective, ObjectiveConfig
from nepa.objectives.monitor import CollapseMonitor
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
    collapse_std: float = Field(0.05, ge=0, description="warn when std*sqrt(D) falls below this")
    collapse_rank: float = Field(
        1.5, ge=0, description="warn when the effective rank falls below this"
    )


def prediction_target(
    h_BSD: torch.Tensor,
    z_BTD: torch.Tensor,
    keep_BT: torch.Tensor | None,
    *,
    shift: bool,
    stop_grad: bool,
    start_token: bool,
):
    """Pair each prediction with its target. Returns (p, t, keep), p and t (B, T', D).

    With a start token, h is (B, T+1, D) and the output at s, z_1..z_{T-1} predicts z_1..z_T.
    Without one, h is (B, T, D) and the output at z_1..z_{T-1} predicts z_2..z_T.
    ``shift=False`` pairs each output with the embedding at its own position instead.
    """
    t = z_BTD.detach() if stop_grad else z_BTD  # THE stop-gradient: on the target path only
    if start_token:
        p = h_BSD[:, :-1] if shift else h_BSD[:, 1:]
        return p, t, keep_BT
    if not shift:
        return h_BSD, t, keep_BT
    return h_BSD[:, :-1], t[:, 1:], None if keep_BT is None else keep_BT[:, 1:]


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
        self.collapse = CollapseMonitor(cfg.monitor_every, cfg.collapse_std, cfg.collapse_rank)

    def pairs(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """(predictions, targets, keep) of a batch: encoder, predictor, then each prediction
        paired with its target (the stop-gradient applied). A variant of the loss overrides
        ``forward`` and calls this."""
        tok = self.encoder(batch)
        h = self.predictor(tok.emb, tok.coords, tok.grid, tok.keep)
        return prediction_target(
            h,
            tok.emb,
            tok.keep,
            shift=self.cfg.shift,
            stop_grad=self.cfg.stop_grad,
            start_token=self.predictor.has_start_token,
        )

    def forward(self, batch: Batch) -> tuple[torch.Tensor, dict[str, torch.Tensor | float]]:
        p, t, keep = self.pairs(batch)
        loss = nepa_loss(p, t, keep)
        self.collapse.observe(p, keep)
        n_tok = float(p.shape[0] * p.shape[1]) if keep is None else keep.sum()
        return loss, {"tokens": n_tok}

    def on_step_start(self, step: int, seed: int) -> None:
        self.predictor.set_step_seed(seed)  # RoPE's train-time coordinate rescale

    def monitor(self, step: int) -> dict[str, float]:
        """Every ``monitor_every`` steps: collapse statistics of the last forward's predictions,
        with a loud warning when they look collapsed."""
        return self.collapse(step)

    def no_weight_decay(self) -> set[str]:
        return self.backbone().no_weight_decay()  # the start token

    def backbone(self) -> TokenBackbone:
        return TokenBackbone(self.encoder, self.predictor)
