"""``nepa bench train RECIPE``: the whole training loop against the model step alone, in one
process.

The loop is the trainer itself (:func:`nepa.train.trainer.train`): the recipe's own data,
augmentation, loader workers, hooks, logging and checkpoint interval, in a scratch run
directory, for ``warmup + steps`` steps. Its time per step comes from the run's own
``samples_per_s`` records (one every ``warmup`` steps; the first, which holds the FLOP-counting
step and the loader's start, is left out). The model step is the same objective at the same
precision on one real batch of that loader: forward, backward, gradient clipping, AdamW and the
objective's hooks, and nothing else (:func:`nepa.bench.recipe_loader.step_rate`). Rounds
alternate the two; each figure is the median over rounds. ``outside`` is the share of the
loop's time spent outside the model step, ``1 - loop rate / step rate``; the target is 3%.
"""

from __future__ import annotations

import statistics
import tempfile
from collections.abc import Callable
from pathlib import Path

from nepa.bench.recipe_loader import _batches, step_rate
from nepa.config import RunConfig, apply_overrides
from nepa.data.base import build_dataset
from nepa.train.rundir import read_metrics
from nepa.train.trainer import train

TARGET_OUTSIDE = 0.03  # the loop may spend at most this share of its time outside the step


def loop_rate(cfg: RunConfig, steps: int, warmup: int, work: Path) -> float:
    """Samples per second of the trainer over ``steps`` steps after ``warmup``."""
    cfg = apply_overrides(cfg, [f"train.steps={warmup + steps}", f"train.log_every={warmup}"])
    result = train(cfg, work, progress=False)
    if result.stopped_by != "completed":
        raise RuntimeError(f"the benchmark's training run stopped ({result.stopped_by})")
    records = [r for r in read_metrics(work) if "samples_per_s" in r]
    timed = [r for r in records if r["step"] > warmup]
    seconds = sum(warmup * cfg.train.batch_size / r["samples_per_s"] for r in timed)
    return steps * cfg.train.batch_size / seconds


def run_train_bench(
    cfg: RunConfig,
    *,
    steps: int,
    warmup: int,
    rounds: int,
    log: Callable[[str], None] = print,
) -> dict:
    if steps % warmup:  # the run logs every `warmup` steps: the timed steps are whole intervals
        raise ValueError(f"--steps ({steps}) must be a multiple of --warmup ({warmup})")
    dataset = build_dataset(cfg.data, split="train", train=True)
    batch = next(_batches(cfg, dataset, 0))
    loops, models = [], []
    with tempfile.TemporaryDirectory(prefix="nepa-bench-train-") as tmp:
        for r in range(rounds):
            loops.append(loop_rate(cfg, steps, warmup, Path(tmp) / f"round{r}"))
            models.append(step_rate(cfg, batch, steps))
            log(
                f"{cfg.name}: round {r + 1}/{rounds}: loop {loops[-1]:,.1f} samples/s, "
                f"model step {models[-1]:,.1f} samples/s"
            )
    loop, model = statistics.median(loops), statistics.median(models)
    outside = 1 - loop / model
    log(
        f"{cfg.name}: the training loop runs at {loop:,.1f} samples/s against the model step's "
        f"{model:,.1f}: {100 * outside:.1f}% of its time is outside the step "
        f"(target <= {100 * TARGET_OUTSIDE:.0f}%)"
    )
    return {
        "recipe": cfg.name,
        "batch": cfg.train.batch_size,
        "workers": cfg.train.num_workers,
        "precision": cfg.train.precision,
        "steps": steps,
        "warmup": warmup,
        "loop_samples_per_s": loop,
        "model_samples_per_s": model,
        "outside": outside,
        "target_outside": TARGET_OUTSIDE,
        "rounds": {"loop": loops, "model": models},
    }
