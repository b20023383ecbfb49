"""``nepa bench memory``: one training step's peak memory and time against sequence length.

For each length T and model variant (see :mod:`nepa.bench.models`; on a GPU the NEPA block with
SDPA against xformers), one step as ``nepa bench step`` runs it (forward, NEPA loss, backward,
AdamW) on pre-embedded tokens (a square grid when T is a square, else 1-D), after one untimed
step. Peak memory is
``torch.cuda.max_memory_allocated`` over the timed step, on CUDA only (a CPU has no allocator
statistics to reset; its rows carry ``null``). A length that runs out of memory is reported as
such and the longer ones are not tried for that variant.
"""

from __future__ import annotations

import gc
from collections.abc import Callable
from dataclasses import dataclass

import torch

from nepa.bench.machine import machine_info, timed
from nepa.bench.models import Shape, bench_inputs, build_model
from nepa.bench.step import make_step


@dataclass(frozen=True)
class MemoryBenchConfig:
    dim: int = 768
    depth: int = 12
    heads: int = 12
    lengths: tuple[int, ...] = (1024, 2048, 4096, 8192, 16384)
    batch: int = 1
    precision: str = "bf16"
    variants: tuple[str, ...] = ("full", "full-xformers")
    seed: int = 0


def _peak(device: torch.device, fn: Callable[[], None]) -> tuple[float, int | None]:
    """(seconds, peak bytes allocated during the call; None off CUDA)."""
    if device.type != "cuda":
        return timed(fn, device), None
    torch.cuda.reset_peak_memory_stats(device)
    seconds = timed(fn, device)
    return seconds, torch.cuda.max_memory_allocated(device)


def _free(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def bench_memory(
    cfg: MemoryBenchConfig, device: torch.device, log: Callable[[str], None] = print
) -> dict:
    rows = []
    for variant in cfg.variants:
        for T in sorted(cfg.lengths):
            shape = Shape(cfg.dim, cfg.depth, cfg.heads, T)
            row = {"model": variant, "tokens": T, "batch": cfg.batch, "precision": cfg.precision}
            try:
                model = build_model(variant, shape, device, cfg.seed)
                emb, coords = bench_inputs(shape, cfg.batch, device, cfg.seed)
                step, _ = make_step(model, emb, coords, shape.grid, cfg.precision == "bf16", device)
                step()  # untimed: allocator warm-up, kernel choice
                row["step_s"], row["peak_bytes"] = _peak(device, step)
            except torch.OutOfMemoryError:
                row["out_of_memory"] = True
            finally:
                model = emb = step = None  # noqa: F841 (freed before the next length)
                _free(device)
            rows.append(row)
            log(_line(row))
            if row.get("out_of_memory"):
                break  # longer sequences of this variant will not fit either
    return {"config": cfg.__dict__, "machine": machine_info(device), "runs": rows}


def _line(row: dict) -> str:
    head = f"{row['precision']} {row['model']:14} T={row['tokens']:6d} batch {row['batch']}"
    if row.get("out_of_memory"):
        return f"{head}: out of memory"
    peak = row["peak_bytes"]
    mem = f"{peak / 2**30:.2f} GiB peak" if peak is not None else "peak memory n/a (CPU)"
    return f"{head}: {row['step_s'] * 1e3:.1f} ms per step, {mem}"
