"""``nepa eval {knn,linear,attentive,finetune} RUN_DIR [--data MODULE_OR_FILE:FUNCTION]
[--set eval.layer=2 ...] [--random-init] [--device cpu] [--json FILE]``."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path

from nepa.cli import add_overrides


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("eval", help="evaluate a run: frozen-feature probes or fine-tuning")
    evsub = p.add_subparsers(dest="eval_command", required=True)
    k = evsub.add_parser(
        "knn", help="k-NN classification (k=20, cosine, temperature-weighted votes)"
    )
    _common(k)
    k.add_argument(
        "--sweep",
        action="store_true",
        help="every layer x {mean, last, start, grid2, grid4} x {causal, bidirectional}",
    )
    k.add_argument(
        "--raw-pixels",
        action="store_true",
        help="kNN on the centred raw inputs of the same splits (the floor features should beat)",
    )
    k.set_defaults(func=run_knn)
    lin = evsub.add_parser(
        "linear",
        help="linear probe: standardised features, L2 chosen on a validation split of train",
    )
    _common(lin)
    lin.set_defaults(func=run_linear)
    att = evsub.add_parser(
        "attentive",
        help="attentive probe: learned queries over frozen tokens (eval.attentive.*), "
        "lr chosen on a validation split of train",
    )
    _common(att)
    att.set_defaults(func=run_attentive)
    ft = evsub.add_parser(
        "finetune",
        help="full fine-tuning: bidirectional attention, layer-wise lr decay, RandAugment, "
        "mixup/cutmix (eval.finetune.*)",
    )
    _common(ft)
    ft.set_defaults(func=run_finetune)


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_dir", type=Path)
    p.add_argument(
        "--data",
        default=None,
        metavar="MODULE_OR_FILE:FUNCTION",
        help="take the data config from this recipe instead of the run's",
    )
    add_overrides(p, "--set eval.layer=2 (only eval.* and data.*)")
    p.add_argument(
        "--random-init", action="store_true", help="the same architecture at its seeded random init"
    )
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda if available)")
    p.add_argument("--json", type=Path, default=None, help="write the result to this file")


def _load(args: argparse.Namespace):
    """(cfg, objective, device) of the run, or an exit code after printing why not."""
    import torch

    from nepa.config import ConfigError, apply_overrides, load_recipe
    from nepa.eval.load import load_run
    from nepa.train.checkpoint import CheckpointError

    try:
        cfg, objective = load_run(args.run_dir, random_init=args.random_init)
        if args.data:
            data_cfg, _ = load_recipe(args.data)
            cfg = cfg.model_copy(update={"data": data_cfg.data})
        bad = [o for o in args.overrides if not o.startswith(("eval.", "data."))]
        if bad:
            raise ConfigError(
                f"only eval.* and data.* keys can be overridden at evaluation, got {bad}"
            )
        cfg = apply_overrides(cfg, args.overrides)
    except (ConfigError, FileNotFoundError, CheckpointError) as e:
        print(f"nepa eval: {e}", file=sys.stderr)
        return 2
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    return cfg, objective, device


def run_knn(args: argparse.Namespace) -> int:
    from nepa.eval.run import knn_eval, raw_pixel_knn

    loaded = _load(args)
    if isinstance(loaded, int):
        return loaded
    cfg, objective, device = loaded
    if args.sweep:
        depth = cfg.predictor.depth
        results = knn_eval(
            cfg,
            objective,
            device,
            layers=list(range(1, depth + 1)),
            pools=["mean", "last", "start", "grid2", "grid4"],
            attns=["causal", "bidirectional"],
        )
    elif args.raw_pixels:
        results = [{"protocol": "knn", **raw_pixel_knn(cfg)}]
    else:
        results = knn_eval(cfg, objective, device)
    for r in results:
        print(json.dumps(r))
    if args.json:
        args.json.write_text(json.dumps(results if args.sweep else results[0], indent=2) + "\n")
    return 0


def run_linear(args: argparse.Namespace) -> int:
    from nepa.eval.run import linear_eval

    return _run_one(args, linear_eval)


def run_attentive(args: argparse.Namespace) -> int:
    from nepa.eval.run import attentive_eval

    return _run_one(args, attentive_eval)


def run_finetune(args: argparse.Namespace) -> int:
    from nepa.eval.run import finetune_eval

    return _run_one(args, finetune_eval)


def _run_one(args: argparse.Namespace, evaluate: Callable[..., dict]) -> int:
    """Load the run, evaluate it once, print one JSON line and write ``--json``."""
    loaded = _load(args)
    if isinstance(loaded, int):
        return loaded
    result = evaluate(*loaded)
    print(json.dumps(result))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0
