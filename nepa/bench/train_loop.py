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
loop's time spent outside the model step, ``1 - loop rate / step rate`` per round (the machine's
speed drifts between rounds), its median; the target is 3%. ``data_wait`` is the part of the
loop's time spent waiting for batches, from the trainer's own records.
"""

from __future__ import annotations

import statistics
import tempfile
from collections.abc import Callable
from pathlib import Path

from nepa.bench.recipe_loader import step_rate
from nepa.config import RunConfig, apply_overrides
from nepa.data.base import build_dataset
from nepa.data.loader import single_process_batches
from nepa.train.rundir import read_metrics
from nepa.train.trainer import train

TARGET_OUTSIDE = 0.03  # the loop may spend at most this share of its time outside the step


def loop_rate(cfg: RunConfig, steps: int, warmup: int, work: Path) -> tuple[float, float]:
    """(samples per second of the trainer over ``steps`` steps after ``warmup``, the share of
    that time it waited for batches, from its own ``data_wait`` records)."""
    cfg = apply_overrides(cfg, [f"train.steps={warmup + steps}", f"train.log_every={warmup}"])
    result = train(cfg, work, progress=False)
    if result.stopped_by != "completed":
        raise RuntimeError(f"the benchmark's training run stopped ({result.stopped_by})")
    records = [r for r in read_metrics(work) if "samples_per_s" in r]
    timed = [r for r in records if r["step"] > warmup]
    dts = [warmup * cfg.train.batch_size / r["samples_per_s"] for r in timed]
    waited = sum(r["data_wait"] * dt for r, dt in zip(timed, dts, strict=True))
    return steps * cfg.train.batch_size / sum(dts), waited / sum(dts)


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
    batch = next(single_process_batches(dataset, global_batch=cfg.train.batch_size, seed=cfg.seed))
    loops, models, waits = [], [], []
    with tempfile.TemporaryDirectory(prefix="nepa-bench-train-") as tmp:
        for r in range(rounds):
            rate, wait = loop_rate(cfg, steps, warmup, Path(tmp) / f"round{r}")
            loops.append(rate)
            waits.append(wait)
            models.append(step_rate(cfg, batch, steps))
            log(
                f"{cfg.name}: round {r + 1}/{rounds}: loop {rate:,.1f} samples/s "
                f"({100 * wait:.1f}% waiting for data), model step {models[-1]:,.1f} samples/s"
            )
    # each round's loop against the step measured right after it: the machine's speed drifts
    outside = statistics.median(1 - l / m for l, m in zip(loops, models, strict=True))
    loop, model, wait = (statistics.median(x) for x in (loops, models, waits))
    log(
        f"{cfg.name}: the training loop runs at {loop:,.1f} samples/s against the model step's "
        f"{model:,.1f}: {100 * outside:.1f}% of its time is outside the step, "
        f"{100 * wait:.1f}% waiting for data (target <= {100 * TARGET_OUTSIDE:.0f}% outside)"
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
        "data_wait": wait,
        "target_outside": TARGET_OUTSIDE,
        "rounds": {"loop": loops, "model": models, "data_wait": waits},
    }
