"""Collapse monitor: is the representation spreading out or collapsing to a point?"""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F

log = logging.getLogger(__name__)


@torch.no_grad()
def collapse_stats(out_BTD: torch.Tensor, max_rows: int = 4096) -> dict[str, float]:
    """Statistics of L2-normalised outputs.

    std:      per-dimension std across the batch (per position), averaged; times sqrt(D) it is
              about 1 for well-spread unit vectors and 0 for a collapsed one.
    eff_rank: exp(entropy) of the singular-value distribution of the centred (N, D) matrix
              (Roy & Vetterli), N = B*T rows (subsampled to ``max_rows``); 1 means rank one.
    """
    z = F.normalize(out_BTD.float(), dim=-1)
    D = z.shape[-1]
    std = z.std(dim=0).mean().item() if z.shape[0] > 1 else float("nan")
    rows = z.reshape(-1, D)
    if rows.shape[0] > max_rows:
        rows = rows[torch.linspace(0, rows.shape[0] - 1, max_rows, device=rows.device).long()]
    s = torch.linalg.svdvals(rows - rows.mean(0))
    p = s / s.sum().clamp_min(1e-12)
    eff_rank = torch.exp(-(p * p.clamp_min(1e-12).log()).sum()).item()
    return {"std": std, "std_x_sqrt_d": std * D**0.5, "eff_rank": eff_rank}


def check_collapse(
    stats: dict[str, float], step: int, min_std_ratio: float, min_rank: float
) -> bool:
    """Log a loud warning if the outputs look collapsed; returns True when they do."""
    collapsed = stats["std_x_sqrt_d"] < min_std_ratio or stats["eff_rank"] < min_rank
    if collapsed:
        log.warning(
            "!!! REPRESENTATION COLLAPSE at step %d: std*sqrt(D)=%.4f (threshold %.3f), "
            "effective rank=%.2f (threshold %.1f). Outputs are becoming identical; check the "
            "stop-gradient, the shift and the learning rate.",
            step,
            stats["std_x_sqrt_d"],
            min_std_ratio,
            stats["eff_rank"],
            min_rank,
        )
    return collapsed


class CollapseMonitor:
    """The collapse monitor as a part any objective can own.

    ``observe(out)`` in ``forward`` keeps the latest (B, T, D) outputs (detached; real tokens
    only when a keep mask is given); ``objective.monitor(step)`` returns ``self(step)``: every
    ``every`` steps the ``collapse/*`` statistics, with a loud warning when they look collapsed.
    """

    def __init__(self, every: int, min_std_ratio: float, min_rank: float) -> None:
        self.every, self.min_std_ratio, self.min_rank = every, min_std_ratio, min_rank
        self._last: torch.Tensor | None = None

    def observe(self, out_BTD: torch.Tensor, keep_BT: torch.Tensor | None = None) -> None:
        if not self.every:
            return
        out = out_BTD.detach()
        if keep_BT is not None and not bool(keep_BT.all()):
            out = out[keep_BT][:, None]  # (N, 1, D): the real tokens, one per "sample"
        self._last = out

    def __call__(self, step: int) -> dict[str, float]:
        if not self.every or step % self.every or self._last is None:
            return {}
        stats = collapse_stats(self._last)
        check_collapse(stats, step, self.min_std_ratio, self.min_rank)
        return {f"collapse/{k}": v for k, v in stats.items()}
