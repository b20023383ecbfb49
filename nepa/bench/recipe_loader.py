"""``nepa bench loader --recipe RECIPE``: a recipe's own training loader against its own model
step, for any modality (audio with the front end in the workers, generated video, sensor
windows, shards).

The loader is exactly the trainer's (:func:`nepa.data.loader.train_loader` over the recipe's
train split, its batch size, seeded), timed in samples per second after ``warmup`` batches for
each worker count, in ``rounds`` whose figure is the median. The model rate is the recipe's
objective training on one real batch from that loader (forward, loss, backward, AdamW) in the
main process with torch's default threads; the step is what the loader has to keep fed. The
worker count the recipe trains with (``train.num_workers``) is the one its ratio is reported
for; the target is a loader at least 3x faster than the step.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import torch

from nepa.bench.loader import TARGET_VS_MODEL, rate
from nepa.config import RunConfig
from nepa.data.base import build_dataset
from nepa.data.loader import single_process_batches
from nepa.train.build import initialized_objective, resolve_precision
from nepa.train.optim import build_optimizer


def _batches(cfg: RunConfig, dataset, workers: int):
    """The recipe's training batches (its batch size and seed), on ``workers`` workers."""
    return single_process_batches(
        dataset, global_batch=cfg.train.batch_size, seed=cfg.seed, workers=workers
    )


def step_rate(cfg: RunConfig, batch: dict, steps: int) -> float:
    """Training samples per second of the recipe's objective on one real batch, in the main
    process on the CPU at the recipe's precision: forward, loss, backward, gradient clipping,
    AdamW and the objective's hooks, as the trainer runs them (accumulation aside)."""
    torch.manual_seed(cfg.seed)
    objective = initialized_objective(cfg)
    bf16, _ = resolve_precision(cfg.train.precision, torch.device("cpu"))
    optimizer = build_optimizer(objective.param_groups(cfg.optim), cfg.optim)
    clip = cfg.optim.clip_grad if cfg.optim.clip_grad is not None else float("inf")
    objective.on_train_start(steps + 2)
    times = []
    for i in range(steps + 2):
        t = time.perf_counter()
        objective.on_step_start(i, i)
        objective.on_micro_batch(0)
        with torch.autocast("cpu", torch.bfloat16, enabled=bf16):
            loss, _ = objective(batch)
            loss.backward()
        params = [p for p in objective.parameters() if p.grad is not None]
        torch.nn.utils.clip_grad_norm_(params, clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        objective.on_step_end(i + 1)
        if i >= 2:  # the first steps allocate
            times.append(time.perf_counter() - t)
    return cfg.train.batch_size / statistics.median(times)


def run_recipe_loader_bench(
    cfg: RunConfig,
    *,
    workers: tuple[int, ...],
    batches: int,
    rounds: int,
    warmup: int = 3,
    model_steps: int = 10,
    log: Callable[[str], None] = print,
) -> dict:
    dataset = build_dataset(cfg.data, split="train", train=True)
    batch = cfg.train.batch_size
    loaders = []
    for w in workers:
        rates = [rate(_batches(cfg, dataset, w), batch, batches, warmup) for _ in range(rounds)]
        loaders.append({"workers": w, "samples_per_s": statistics.median(rates), "rounds": rates})
        log(f"{cfg.name}: loader with {w} worker(s): {loaders[-1]['samples_per_s']:,.0f} samples/s")
    model = step_rate(cfg, next(_batches(cfg, dataset, 0)), model_steps)
    out = {
        "recipe": cfg.name,
        "batch": batch,
        "loaders": loaders,
        "model_samples_per_s": model,
        "recipe_workers": cfg.train.num_workers,
        "target_vs_model": TARGET_VS_MODEL,
    }
    at_recipe = next((r for r in loaders if r["workers"] == cfg.train.num_workers), None)
    if at_recipe is not None:
        out["loader_vs_model"] = at_recipe["samples_per_s"] / model
        log(
            f"{cfg.name}: model step {model:,.0f} samples/s; the loader with the recipe's "
            f"{cfg.train.num_workers} worker(s) feeds {out['loader_vs_model']:.1f}x the step "
            f"(target >= {TARGET_VS_MODEL}x)"
        )
    return out
