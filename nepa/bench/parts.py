"""Two parts of the loop, each timed in its variants side by side in one process:

- ``nepa bench optim RECIPE``: one AdamW step over the recipe's parameters (random gradients)
  with each of torch's kernels (for_loop, foreach, fused), interleaved, median per kernel.
- ``nepa bench extract RECIPE``: frozen-feature extraction (the recipe's model at random init,
  its evaluation layer and pooling) over ``images`` items of its test split, fp32 against bf16
  autocast at each batch size, interleaved, in items per second.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable

import torch
from torch.utils.data import Subset

from nepa.bench.step import interleaved
from nepa.config import RunConfig
from nepa.data.base import build_dataset
from nepa.eval.features import Need, extract_needs
from nepa.eval.run import resolve_layer
from nepa.train.build import initialized_objective, native_cpu_bf16
from nepa.train.optim import OptimConfig, build_optimizer

IMPLS = ("for_loop", "foreach", "fused")


def medians(variants: dict[str, Callable[[], object]], rounds: int) -> dict[str, float]:
    """Median seconds of each variant, timed in alternating order after one untimed call."""
    cpu = torch.device("cpu")
    seconds = interleaved(variants, rounds, warmup=1, device=cpu)  # type: ignore[arg-type]
    return {k: statistics.median(v) for k, v in seconds.items()}


def bench_optim(cfg: RunConfig, rounds: int, log: Callable[[str], None] = print) -> dict:
    objective = initialized_objective(cfg)
    params = [p for p in objective.parameters() if p.requires_grad]
    for p in params:
        p.grad = torch.randn_like(p)
    optimizers = {
        impl: build_optimizer(
            objective.param_groups(cfg.optim),
            OptimConfig(**{**cfg.optim.model_dump(), "impl": impl}),
        )
        for impl in IMPLS
    }
    seconds = medians({k: o.step for k, o in optimizers.items()}, rounds)
    n = sum(p.numel() for p in params)
    for impl in IMPLS:
        log(
            f"{cfg.name}: AdamW {impl}: {1000 * seconds[impl]:.2f} ms per step "
            f"({n / 1e6:.2f}M parameters in {len(params)} tensors; "
            f"{seconds['for_loop'] / seconds[impl]:.2f}x for_loop)"
        )
    return {"recipe": cfg.name, "parameters": n, "tensors": len(params), "seconds": seconds}


def bench_extract(
    cfg: RunConfig,
    *,
    images: int,
    batch_sizes: tuple[int, ...],
    rounds: int,
    log: Callable[[str], None] = print,
) -> dict:
    objective = initialized_objective(cfg).eval()
    test = build_dataset(cfg.data, split="test", train=False)
    subset = Subset(test, list(range(min(images, len(test)))))
    backbone = objective.backbone()
    need = Need(resolve_layer(cfg.eval.layer, backbone.depth), cfg.eval.pool)
    attn = cfg.eval.attn or backbone.attn
    cpu = torch.device("cpu")

    def run(bf16: bool, batch: int) -> Callable[[], object]:
        return lambda: extract_needs(
            objective, subset, {need}, attn=attn, device=cpu, batch_size=batch, bf16=bf16
        )

    variants = {(p, b): run(p == "bf16", b) for p in ("fp32", "bf16") for b in batch_sizes}
    seconds = medians({f"{p}@{b}": fn for (p, b), fn in variants.items()}, rounds)
    rates = {k: len(subset) / s for k, s in seconds.items()}
    for k, r in rates.items():
        log(f"{cfg.name}: extraction {k}: {r:,.0f} items/s")
    return {
        "recipe": cfg.name,
        "items": len(subset),
        "layer": need.layer,
        "pool": need.pool,
        "native_bf16": native_cpu_bf16(),
        "items_per_s": rates,
    }
