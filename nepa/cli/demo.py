"""``nepa demo``: offline pretraining on the MNIST subset shipped in the package, then kNN.

Pretrains a small NEPA model on the CPU (about 1.5 minutes on 2 cores), evaluates kNN top-1 of
its frozen features and of the same architecture at random init (and of raw pixels, the floor
DESIGN.md asks to compare with), prints all three, writes a loss-curve PNG, and exits non-zero
unless pretraining beat random init.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

from nepa.cli import add_overrides

log = logging.getLogger("nepa.demo")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "demo",
        help="offline demo: pretrain on shipped MNIST digits, compare kNN with random init",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--out", type=Path, default=None, help="run directory (default: runs/demo-<time>)"
    )
    add_overrides(p, "--set train.steps=100")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:

    from nepa.config import ConfigError, load_recipe
    from nepa.device import pick_device
    from nepa.eval.load import load_run
    from nepa.eval.plots import plot_loss
    from nepa.eval.run import eval_splits, evaluate, raw_input_knn
    from nepa.train.trainer import train

    try:
        cfg, recipe = load_recipe("nepa.demo_recipe:demo", args.overrides)
    except ConfigError as e:
        print(f"nepa demo: {e}", file=sys.stderr)
        return 2
    out = args.out or Path("runs") / f"demo-{time.strftime('%Y%m%d-%H%M%S')}"
    device = pick_device("cpu")
    t0 = time.perf_counter()
    train(cfg, out, recipe=recipe, progress=not args.no_progress)
    train_s = time.perf_counter() - t0
    curve = plot_loss(out, title=f"nepa demo: {cfg.train.steps} steps, {train_s:.0f} s")

    t1 = time.perf_counter()
    _, trained = load_run(out)
    _, random_init = load_run(out, random_init=True)
    splits = eval_splits(cfg)  # one bank and one query set for all three
    res_trained = evaluate("knn", cfg, trained, device, random_init=False, splits=splits)
    res_random = evaluate("knn", cfg, random_init, device, random_init=True, splits=splits)
    res_pixels = raw_input_knn(cfg, splits=splits)
    eval_s = time.perf_counter() - t1

    beat = res_trained["top1"] > res_random["top1"]
    summary = {
        "pretrain_seconds": train_s,
        "eval_seconds": eval_s,
        "steps": cfg.train.steps,
        "trained": res_trained,
        "random_init": res_random,
        "raw_pixels": res_pixels,
        "pretraining_beat_random_init": beat,
        "loss_curve": str(curve),
    }
    (out / "demo.json").write_text(json.dumps(summary, indent=2) + "\n")
    e = cfg.eval
    print(
        f"\nkNN top-1 on {res_trained['n_test']} test digits (bank of {res_trained['n_train']}; "
        f"k={e.k}, T={e.temperature}, block {res_trained['layer']}, {e.pool}-pooled, {res_trained['attn']} attention)"
    )
    print(
        f"  NEPA-pretrained ({cfg.train.steps} steps, {train_s:.0f} s): {100 * res_trained['top1']:6.2f}%"
    )
    print(f"  same network at random init:         {100 * res_random['top1']:6.2f}%")
    print(f"  raw pixels (centred):                {100 * res_pixels['top1']:6.2f}%")
    print(f"loss curve: {curve}\nsummary:    {out / 'demo.json'}")
    if not beat:
        print("FAILED: pretraining did not beat random init", file=sys.stderr)
        return 1
    print(
        f"OK: pretraining beat random init by {100 * (res_trained['top1'] - res_random['top1']):.2f} points"
    )
    return 0
