"""``nepa bench step``: time a full training step of the predictor against timm's ViT blocks.

One step = ``zero_grad`` + forward (under bf16 autocast for ``bf16``) + the NEPA loss on the
shifted outputs + backward + AdamW (the trainer's parameter groups), on pre-embedded tokens
``(B, T, D)``. The models (see :mod:`nepa.bench.models`) are timed in interleaved rounds, the
order reversed every round, so a machine shared with other work slows them alike; each model's
figure is the median over rounds after warm-up.
"""

from __future__ import annotations

import gc
import statistics
from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch
from torch import nn

from nepa.bench.machine import machine_info, matmul_rate, native_cpu_bf16, timed
from nepa.bench.models import (
    FLOP_FORMULA,
    VARIANTS,
    Shape,
    attention_kernels,
    bench_inputs,
    build_model,
    matmul_params,
    step_flops,
)
from nepa.config import OptimConfig
from nepa.device import pick_device
from nepa.objectives.nepa import nepa_loss, prediction_target
from nepa.params import decay_groups
from nepa.predictor import PredictorConfig
from nepa.predictor.attention import xformers_available
from nepa.train.optim import build_optimizer

PRECISIONS = ("fp32", "bf16")
TARGET_MATCHED_VS_TIMM = 1.05  # the matched predictor at least 5% faster than timm
TARGET_FULL_SLOWDOWN = 0.05  # the NEPA block at most 5% slower than matched


@dataclass(frozen=True)
class StepBenchConfig:
    """What to time. ``None`` fields take per-device defaults (see :func:`step_defaults`)."""

    dim: int = 384
    depth: int = 12
    heads: int = 6
    tokens: int = 256
    batch: int | None = None
    precisions: tuple[str, ...] = PRECISIONS
    steps: int | None = None
    warmup: int | None = None
    device: str = "auto"
    matmul_size: int | None = None
    variants: tuple[str, ...] | None = None
    seed: int = 0
    profile: int = 0  # > 0: also profile one step of each model, this many top ops per table

    @property
    def shape(self) -> Shape:
        return Shape(self.dim, self.depth, self.heads, self.tokens)


def step_defaults(device: torch.device, precision: str) -> tuple[int, int, int]:
    """(batch, steps, warmup). On a CPU without native bf16 a bf16 step of the default size takes
    tens of seconds (its matmuls run at 0.3-17 GFLOP/s), so that case gets batch 1, 2 steps."""
    if device.type == "cuda":
        return 64, 20, 5
    if precision == "bf16" and not native_cpu_bf16():
        return 1, 2, 1
    return 8, 4, 1


def default_variants(device: torch.device) -> tuple[str, ...]:
    if device.type == "cuda" and xformers_available():
        return ("timm", "matched", "full", "full-xformers")
    return ("timm", "matched", "full")


def make_step(
    model: nn.Module,
    emb: torch.Tensor,
    coords: torch.Tensor,
    grid,
    bf16: bool,
    device: torch.device,
) -> tuple[Callable[[], None], list[torch.Tensor]]:
    """A closure running one training step; the second value collects its losses."""
    cfg = OptimConfig()
    opt = build_optimizer(decay_groups(model, cfg.weight_decay, model.no_weight_decay()), cfg)
    losses: list[torch.Tensor] = []

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            h = model(emb, coords, grid)  # (B, T + 1, D)
            p, t, _ = prediction_target(h, emb, None, shift=True, stop_grad=True, start_token=True)
            loss = nepa_loss(p, t)
        loss.backward()
        opt.step()
        losses.append(loss.detach())

    return step, losses


def interleaved(
    steps: dict[str, Callable[[], None]], rounds: int, warmup: int, device: torch.device
) -> dict[str, list[float]]:
    """Seconds per step for each entry, timed in alternating order round by round."""
    names = list(steps)
    for _ in range(warmup):
        for name in names:
            steps[name]()
    seconds: dict[str, list[float]] = {name: [] for name in names}
    for r in range(rounds):
        for name in names if r % 2 == 0 else names[::-1]:
            seconds[name].append(timed(steps[name], device))
    return seconds


def bench_precision(
    cfg: StepBenchConfig, precision: str, device: torch.device, rate: float
) -> tuple[list[dict], dict]:
    """Time every variant in one precision. Returns (one record per model, ratios)."""
    batch, steps, warmup = step_defaults(device, precision)
    batch, steps = cfg.batch or batch, cfg.steps or steps
    warmup = warmup if cfg.warmup is None else cfg.warmup
    shape = cfg.shape
    emb, coords = bench_inputs(shape, batch, device, cfg.seed)
    variants = cfg.variants or default_variants(device)
    models = {v: build_model(v, shape, device, cfg.seed) for v in variants}
    kernels = {v: attention_kernels(m, shape, device) for v, m in models.items()}  # fail early
    bf16 = precision == "bf16"
    runs = {v: make_step(m, emb, coords, shape.grid, bf16, device) for v, m in models.items()}
    seconds = interleaved({v: run[0] for v, run in runs.items()}, steps, warmup, device)
    records = []
    for v, model in models.items():
        median = statistics.median(seconds[v])
        flops = step_flops(matmul_params(model), shape, batch)
        records.append(
            {
                "precision": precision,
                "model": v,
                "batch": batch,
                "tokens": shape.tokens,
                "steps": steps,
                "warmup": warmup,
                "step_s": seconds[v],
                "step_s_median": median,
                "step_s_min": min(seconds[v]),
                "tokens_per_s": batch * shape.tokens / median,
                "samples_per_s": batch / median,
                "params": sum(p.numel() for p in model.parameters()),
                "matmul_params": matmul_params(model),
                "flops_per_step": flops,
                "flop_per_s": flops / median,
                "matmul_fraction": flops / median / rate,
                "final_loss": float(runs[v][1][-1]),
                "attention_kernels": kernels[v],
            }
        )
    if cfg.profile:
        for record in records:
            record["profile"] = profile_step(runs[record["model"]][0], cfg.profile)
    return records, ratios(seconds)


def profile_step(step: Callable[[], None], rows: int) -> str:
    """torch.profiler's table of one step's ops (CPU time; CUDA time too on a GPU), the
    ``rows`` with the most self time first."""
    activities = [torch.profiler.ProfilerActivity.CPU]
    if torch.cuda.is_available():
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    with torch.profiler.profile(activities=activities, acc_events=True) as prof:
        step()
    key = "self_cuda_time_total" if len(activities) > 1 else "self_cpu_time_total"
    return prof.key_averages().table(sort_by=key, row_limit=rows, max_name_column_width=48)


def ratios(seconds: dict[str, list[float]]) -> dict:
    """Speed ratios from median step times; ``*_paired`` = median over rounds of the per-round
    ratio (robust to slow drifts of a shared machine)."""
    med = {k: statistics.median(v) for k, v in seconds.items()}

    def paired(a: str, b: str) -> float:  # speed of b relative to a = time a / time b
        return statistics.median(x / y for x, y in zip(seconds[a], seconds[b], strict=True))

    out = {}
    if "timm" in med and "matched" in med:
        out["matched_vs_timm"] = med["timm"] / med["matched"]
        out["matched_vs_timm_paired"] = paired("timm", "matched")
        out["matched_vs_timm_ok"] = out["matched_vs_timm"] >= TARGET_MATCHED_VS_TIMM
    if "matched" in med and "full" in med:
        out["full_slowdown_vs_matched"] = med["full"] / med["matched"] - 1
        out["full_slowdown_vs_matched_paired"] = 1 / paired("matched", "full") - 1
        out["full_slowdown_ok"] = out["full_slowdown_vs_matched"] <= TARGET_FULL_SLOWDOWN
    if "full" in med and "full-xformers" in med:
        out["xformers_vs_sdpa"] = med["full"] / med["full-xformers"]
    for v in ("matched", "full"):  # the measured kernel choice against torch's dispatch
        if v in med and f"{v}-torch" in med:
            out[f"{v}_vs_torch_kernel"] = med[f"{v}-torch"] / med[v]
    return out


def check_config(cfg: StepBenchConfig) -> torch.device:
    """Raise ValueError (saying what to change) for anything the run could not do; returns the
    device it would run on."""
    bad = [p for p in cfg.precisions if p not in PRECISIONS]
    if bad or not cfg.precisions:
        raise ValueError(f"bad precision list {cfg.precisions!r}; valid: {', '.join(PRECISIONS)}")
    if cfg.profile < 0:
        raise ValueError(f"profile must be >= 0 rows, got {cfg.profile}")
    for name in ("dim", "depth", "heads", "tokens", "batch", "steps", "matmul_size"):
        value = getattr(cfg, name)
        if value is not None and value < 1:
            raise ValueError(f"{name} must be positive, got {value}")
    if cfg.warmup is not None and cfg.warmup < 0:
        raise ValueError(f"warmup must be >= 0, got {cfg.warmup}")
    unknown = set(cfg.variants or ()) - set(VARIANTS)
    if unknown:
        raise ValueError(f"unknown variants {sorted(unknown)}; known: {', '.join(VARIANTS)}")
    PredictorConfig(dim=cfg.dim, depth=cfg.depth, heads=cfg.heads)  # dim/heads checks
    return pick_device(cfg.device)


def run_step_bench(cfg: StepBenchConfig) -> dict:
    """Matmul rates, then every (precision, model) step time; everything a report needs."""
    device = check_config(cfg)
    result: dict = {
        "config": asdict(cfg),
        "machine": machine_info(device),
        "flop_formula": FLOP_FORMULA,
    }
    result["config"]["device"] = device.type
    result["matmul"] = {p: matmul_rate(p, device, cfg.matmul_size) for p in cfg.precisions}
    result["runs"], result["ratios"] = [], {}
    for p in cfg.precisions:
        records, result["ratios"][p] = bench_precision(
            cfg, p, device, result["matmul"][p]["flop_per_s"]
        )
        result["runs"] += records
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
    if device.type == "cuda" and xformers_available():
        from nepa.bench.agreement import backend_agreement

        result["agreement"] = backend_agreement(cfg.shape, device, seed=cfg.seed)
    result["machine"]["load_average_end"] = machine_info(device)["load_average"]
    return result


def format_report(result: dict) -> str:
    """The human-readable table printed by ``nepa bench step``."""
    c, m = result["config"], result["machine"]
    lines = [
        f"nepa bench step: dim {c['dim']}, depth {c['depth']}, heads {c['heads']}, "
        f"T {c['tokens']} tokens (+1 start token), device {m['device']} ({m['device_name']}, "
        f"{m['torch_threads']} threads), torch {m['torch']}, timm {m['timm']}",
        "matmul rate (square, median of 5): "
        + ", ".join(
            f"{p} {r['size']}: {r['flop_per_s'] / 1e9:.1f} GFLOP/s"
            for p, r in result["matmul"].items()
        ),
        "",
        f"{'prec':5} {'model':14} {'batch':>5} {'step ms':>9} {'tokens/s':>9} {'samples/s':>9} "
        f"{'GFLOP/s':>8} {'of matmul':>9}  loss",
    ]
    for r in result["runs"]:
        lines.append(
            f"{r['precision']:5} {r['model']:14} {r['batch']:5d} {r['step_s_median'] * 1e3:9.1f} "
            f"{r['tokens_per_s']:9.1f} {r['samples_per_s']:9.2f} {r['flop_per_s'] / 1e9:8.1f} "
            f"{r['matmul_fraction']:9.1%}  {r['final_loss']:.4f}"
        )
    lines.append("")
    for p, q in result["ratios"].items():
        parts = []
        if "matched_vs_timm" in q:
            ok = "ok" if q["matched_vs_timm_ok"] else "MISSED"
            parts.append(
                f"matched/timm speed {q['matched_vs_timm']:.3f}x (paired {q['matched_vs_timm_paired']:.3f}x; "
                f"target >= {TARGET_MATCHED_VS_TIMM:.2f}: {ok})"
            )
        if "full_slowdown_vs_matched" in q:
            ok = "ok" if q["full_slowdown_ok"] else "MISSED"
            parts.append(
                f"full vs matched {q['full_slowdown_vs_matched']:+.1%} time (paired "
                f"{q['full_slowdown_vs_matched_paired']:+.1%}; target <= +{TARGET_FULL_SLOWDOWN:.0%}: {ok})"
            )
        if "xformers_vs_sdpa" in q:
            parts.append(f"xformers/sdpa speed {q['xformers_vs_sdpa']:.3f}x")
        for v in ("matched", "full"):
            if f"{v}_vs_torch_kernel" in q:
                parts.append(f"{v} measured/torch SDPA kernel {q[f'{v}_vs_torch_kernel']:.3f}x")
        lines.append(f"{p}: " + "; ".join(parts))
    kernels = {r["model"]: r["attention_kernels"] for r in result["runs"]}
    lines.append(
        "attention ops: " + "; ".join(f"{k}: {', '.join(v) or '-'}" for k, v in kernels.items())
    )
    for p, a in result.get("agreement", {}).items():
        lines.append(
            f"xformers vs sdpa ({p}): max |out| diff {a['max_abs_out']:.2e}, "
            f"max |grad| diff {a['max_abs_grad']:.2e} (relative {a['max_rel_grad']:.2e}, {a['worst_param']})"
        )
    lines.append(result["flop_formula"])
    for r in result["runs"]:
        if "profile" in r:
            lines += ["", f"profile of one step: {r['precision']} {r['model']}", r["profile"]]
    return "\n".join(lines)
