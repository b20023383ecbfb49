"""Training FLOPs per step of a config, measured before it trains: what ``nepa compare
--equal-flops`` sets every recipe's step count from.

The objective is built and prepared as the trainer would (``fit`` on a fresh run, the lifecycle
hooks), then a few real training steps' forward and backward passes run under torch's
``FlopCounterMode`` (matrix multiplies, convolutions and attention of everything the objective
runs, e.g. JEPA's EMA target and predictor); the optimizer is not stepped. JEPA's mask sizes
change from step to step, so the figure is the mean over ``steps``.
"""

from __future__ import annotations

from nepa.config import RunConfig
from nepa.data.base import build_dataset
from nepa.data.loader import single_process_batches
from nepa.train.build import initialized_objective
from nepa.train.flops import FlopCounterMode
from nepa.train.trainer import step_seed


def step_flops(cfg: RunConfig, steps: int = 3) -> float:
    """Mean training FLOPs of one optimizer step (all micro-batches, one process)."""
    objective = initialized_objective(cfg)
    objective.on_train_start(cfg.train.steps)
    t = cfg.train
    batches = single_process_batches(
        build_dataset(cfg.data, split="train", train=True),
        global_batch=t.batch_size,
        seed=cfg.seed,
        accum=t.accum,
    )
    with FlopCounterMode(display=False) as counter:
        for step in range(steps):
            objective.on_step_start(step, step_seed(cfg.seed, step))
            for micro in range(t.accum):
                batch = next(batches)
                objective.on_micro_batch(micro * (t.batch_size // t.accum))
                loss, _ = objective(batch)
                loss.backward()
            objective.zero_grad(set_to_none=True)
    return counter.get_total_flops() / steps


def equal_flops_steps(bases: dict[str, RunConfig], log=print) -> dict[str, int]:
    """Steps per recipe so that every recipe's training FLOPs equal the first one's."""
    specs = list(bases)
    flops = {spec: step_flops(cfg) for spec, cfg in bases.items()}
    ref = flops[specs[0]] * bases[specs[0]].train.steps
    steps = {spec: max(1, round(ref / flops[spec])) for spec in specs}
    for spec in specs:
        log(
            f"equal FLOPs: {spec}: {flops[spec]:.4g} FLOPs per step -> {steps[spec]} steps "
            f"({steps[spec] * flops[spec]:.4g} in all)"
        )
    return steps
