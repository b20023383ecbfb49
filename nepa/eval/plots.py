"""Plots of a run: the loss curve from metrics.jsonl."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from nepa.train.rundir import read_metrics  # noqa: E402


def plot_loss(run_dir: Path, out: Path | None = None, title: str | None = None) -> Path:
    """Write ``loss.png``: training loss (negative cosine) against optimizer step."""
    rows = [r for r in read_metrics(run_dir) if "loss" in r]
    if not rows:
        raise ValueError(f"{run_dir} has no logged losses to plot")
    fig, ax = plt.subplots(figsize=(6, 3.6), dpi=120)
    ax.plot([r["step"] for r in rows], [r["loss"] for r in rows], lw=1.5)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss (negative cosine)")
    ax.set_title(title or run_dir.name)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    out = out or run_dir / "loss.png"
    fig.savefig(out)
    plt.close(fig)
    return out
