"""The comparison's outputs: results.csv (one row per run), results.json (runs and cells),
results.md (mean ± std per cell), loss.png and accuracy.png. Rewritten after every run, so
partial results are always on disk."""

from __future__ import annotations

import csv
import json
import math
import statistics
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from nepa.compare.grid import RECIPE  # noqa: E402
from nepa.compare.runner import RUN_STATE, Comparison, run_summary  # noqa: E402

TRAIN_FIGURES = (
    "final_loss",
    "eff_rank",
    "std_x_sqrt_d",
    "samples_per_s",
    "train_seconds",
    "train_flops",
)


def collect(comp: Comparison) -> list[dict]:
    """One row per finished-or-partial run that has anything to report."""
    rows = []
    for cell, seed in comp.plan.runs():
        rd = comp.run_dir(cell, seed)
        if not (rd / RUN_STATE).is_file():
            continue
        state = json.loads((rd / RUN_STATE).read_text())
        cfg = comp.configs[(cell, seed)]
        summary = run_summary(rd)
        row = {
            "cell": cell.name,
            **cell.as_dict(),
            "seed": seed,
            "steps": cfg.train.steps,
            "batch_size": cfg.train.batch_size,
            **{k: summary[k] for k in TRAIN_FIGURES if k in summary},
            "train_seconds": round(state["train_seconds"], 1),
            **{f"{k}_top1": v["top1"] for k, v in state["evals"].items()},
            "run_dir": str(rd.relative_to(comp.out)),
        }
        row["_curve"] = summary["curve"]
        rows.append(row)
    return rows


def metric_columns(comp: Comparison) -> list[str]:
    return [
        *(f"{k}_top1" for k in comp.plan.eval_keys()),
        "final_loss",
        "eff_rank",
        "std_x_sqrt_d",
        "train_flops",
        "train_seconds",
    ]


def aggregate(comp: Comparison, rows: list[dict]) -> list[dict]:
    """Per cell: mean, sample std (0 for one seed) and count of each metric."""
    cells = []
    for cell in comp.plan.cells:
        mine = [r for r in rows if r["cell"] == cell.name]
        entry = {"cell": cell.name, **cell.as_dict(), "runs": len(mine)}
        for col in metric_columns(comp):
            entry[col] = seed_stats([r[col] for r in mine if r.get(col) is not None])
        cells.append(entry)
    return cells


def seed_stats(vals: list[float]) -> dict:
    """Mean, sample std (0 for one value) and count; mean and std are None without values."""
    return {
        "mean": statistics.fmean(vals) if vals else None,
        "std": statistics.stdev(vals) if len(vals) > 1 else 0.0 if vals else None,
        "n": len(vals),
    }


def write_report(comp: Comparison) -> list[Path]:
    rows = collect(comp)
    cells = aggregate(comp, rows)
    out = comp.out
    flat = [{k: v for k, v in r.items() if not k.startswith("_")} for r in rows]
    columns = list(dict.fromkeys(k for r in flat for k in r))
    with open(out / "results.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=columns)
        w.writeheader()
        w.writerows(flat)
    (out / "results.json").write_text(
        json.dumps(
            {"plan": json.loads((out / "plan.json").read_text()), "cells": cells, "runs": flat},
            indent=2,
        )
        + "\n"
    )
    (out / "results.md").write_text(markdown(comp, cells))
    files = [out / "results.csv", out / "results.json", out / "results.md"]
    if rows:
        files += [plot_losses(comp, rows), plot_accuracy(comp, cells)]
    return files


def _fmt(stat: dict, scale: float = 1.0, digits: int = 2) -> str:
    if stat["mean"] is None:
        return "-"
    text = f"{stat['mean'] * scale:.{digits}f}"
    return text + (f" ± {stat['std'] * scale:.{digits}f}" if stat["n"] > 1 else "")


def _mean(stat: dict, digits: int = 2, style: str = "f") -> str:
    return "-" if stat["mean"] is None else f"{stat['mean']:.{digits}{style}}"


def markdown(comp: Comparison, cells: list[dict]) -> str:
    plan = comp.plan
    labels = [label for label, _ in plan.cells[0].choices] if plan.cells else []
    evals = plan.eval_keys()
    head = [*labels, "seeds", *(f"{e} top-1 %" for e in evals), "final loss", "eff. rank", "std·√D"]
    head += ["train FLOPs", "train s"]
    budgets = "; ".join(
        f"{_shown(spec)}: {cfg.train.steps} steps of batch {cfg.train.batch_size} "
        f"({cfg.train.steps * cfg.train.batch_size:,} samples)"
        for spec, cfg in comp.bases.items()
    )
    equal = " (steps set for equal training FLOPs)" if plan.equal_flops else ""
    lines = [
        f"# nepa compare: {' vs '.join(_shown(r) for r in plan.all_recipes)}",
        "",
        f"Budget per run: {budgets}{equal}; seeds {list(plan.seeds)}; "
        f"--set {' '.join(plan.overrides) or '(none)'}. Mean ± sample std over seeds. "
        "Eff. rank and std·√D describe the last monitored predictions (collapse: both fall). "
        "Train FLOPs: training FLOPs of the run (forward and backward of everything the "
        "objective runs, counted by torch's FlopCounterMode on the first step); train s: "
        "its wall time.",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "---|" * len(head),
    ]
    for c in cells:
        vals = [_shown(c[label]) if label == RECIPE else c[label] for label in labels]
        vals.append(str(c["runs"]))
        vals += [_fmt(c[f"{e}_top1"], 100) for e in evals]
        vals += [_fmt(c["final_loss"], 1, 4), _fmt(c["eff_rank"], 1, 1), _fmt(c["std_x_sqrt_d"])]
        vals += [_mean(c["train_flops"], digits=3, style="g"), _mean(c["train_seconds"], digits=1)]
        lines.append("| " + " | ".join(vals) + " |")
    lines += ["", *spread_notes(cells, evals), ""]
    return "\n".join(lines)


def _shown(recipe: str) -> str:
    """A recipe file under the working directory is shown relative to it."""
    path, sep, func = recipe.rpartition(":")
    if sep and Path(path).is_absolute() and Path(path).is_relative_to(Path.cwd()):
        return f"{Path(path).relative_to(Path.cwd())}:{func}"
    return recipe


def spread_notes(cells: list[dict], evals: list[str]) -> list[str]:
    """Whether the differences between cells exceed the seed-to-seed spread, per evaluation:
    the span of all cell means against the mean seed std, then each cell against the first
    (the unchanged recipe of ``--ablate``, the first value of ``--vary``): beyond when the
    difference of means exceeds twice the pooled seed std of the two cells."""
    notes = []
    for e in evals:
        stats = [(c["cell"], c[f"{e}_top1"]) for c in cells if c[f"{e}_top1"]["mean"] is not None]
        if len(stats) < 2:
            continue
        means = [s["mean"] * 100 for _, s in stats]
        stds = [s["std"] * 100 for _, s in stats if s["n"] > 1]
        gap = max(means) - min(means)
        if stds:
            spread = statistics.fmean(stds)
            verdict = "exceeds" if gap > 2 * spread else "does not exceed"
            notes.append(
                f"- {e}: cell means span {gap:.2f} points; mean seed std {spread:.2f}; the span "
                f"{verdict} twice the seed-to-seed spread."
            )
        else:
            notes.append(f"- {e}: cell means span {gap:.2f} points (one seed: no spread measured).")
        ref_name, ref = stats[0]
        notes.append(
            f"  - against {ref_name}: " + "; ".join(_against(ref, s, n) for n, s in stats[1:])
        )
    return notes


def _against(ref: dict, stat: dict, name: str) -> str:
    diff = (stat["mean"] - ref["mean"]) * 100
    if stat["n"] < 2 or ref["n"] < 2:
        return f"{name} {diff:+.2f} (no spread)"
    pooled = math.sqrt((stat["std"] ** 2 + ref["std"] ** 2) / 2) * 100
    return (
        f"{name} {diff:+.2f} ({'beyond' if abs(diff) > 2 * pooled else 'within'} 2 x {pooled:.2f})"
    )


def plot_losses(comp: Comparison, rows: list[dict]) -> Path:
    fig, ax = plt.subplots(figsize=(7, 4), dpi=120)
    for cell in comp.plan.cells:
        curves = [r["_curve"] for r in rows if r["cell"] == cell.name and r["_curve"]]
        if not curves:
            continue
        steps = sorted(set.intersection(*(set(s for s, _ in c) for c in curves)))
        by = [dict(c) for c in curves]
        ax.plot(steps, [statistics.fmean(d[s] for d in by) for s in steps], lw=1.3, label=cell.name)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss (mean over seeds)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    return _save(fig, comp.out / "loss.png")


def plot_accuracy(comp: Comparison, cells: list[dict]) -> Path:
    """One panel per protocol: mean top-1 per cell with seed std as error bars; the random-init
    baseline, when evaluated, as a grey bar beside each."""
    evals, names = comp.plan.evals, [c["cell"] for c in cells]
    width = max(4.0, 0.7 * len(cells))
    fig, axes = plt.subplots(
        1, len(evals), figsize=(width * len(evals), 4.2), dpi=120, squeeze=False
    )
    variants = [("", "pretrained", "tab:blue")]
    if comp.plan.random_init:
        variants.append(("@init", "random init", "tab:gray"))
    bar = 0.8 / len(variants)
    for ax, e in zip(axes[0], evals, strict=True):
        shown = []
        for i, (suffix, label, color) in enumerate(variants):
            stats = [c[f"{e}{suffix}_top1"] for c in cells]
            means = [100 * s["mean"] if s["mean"] is not None else float("nan") for s in stats]
            errs = [100 * s["std"] if s["std"] is not None else 0.0 for s in stats]
            xs = [x + (i - (len(variants) - 1) / 2) * bar for x in range(len(names))]
            ax.bar(xs, means, bar, yerr=errs, capsize=3, color=color, label=label)
            shown += [m for m in means if m == m]
        ax.set_xticks(range(len(names)), names, rotation=35, ha="right", fontsize=7)
        ax.set_ylabel(f"{e} top-1 % (mean ± std over seeds)")
        if shown:
            ax.set_ylim(max(0.0, min(shown) - 5), min(100.0, max(shown) + 5))
        ax.grid(axis="y", alpha=0.3)
        ax.legend(fontsize=7)
    return _save(fig, comp.out / "accuracy.png")


def _save(fig: plt.Figure, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
