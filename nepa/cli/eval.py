"""``nepa eval PROTOCOL RUN_DIR [--data MODULE_OR_FILE:FUNCTION] [--set eval.layer=2 ...]
[--random-init] [--device cpu] [--json FILE]``; one subcommand per registered protocol."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from nepa.cli import add_overrides


def register(sub: argparse._SubParsersAction) -> None:
    from nepa.eval.run import PROTOCOLS, protocol_help

    p = sub.add_parser("eval", help="evaluate a run: frozen-feature probes or fine-tuning")
    evsub = p.add_subparsers(dest="eval_command", required=True)
    for name in PROTOCOLS.names():
        q = evsub.add_parser(name, help=protocol_help(name))
        _common(q)
        q.set_defaults(func=run_protocol, protocol=name)
        if name == "knn":  # kNN is cheap enough to sweep, and has a raw-input floor
            q.add_argument(
                "--sweep",
                action="store_true",
                help="every layer x {mean, last, start, grid2, grid4} x {causal, bidirectional}",
            )
            q.add_argument(
                "--raw-pixels",
                action="store_true",
                help="kNN on the centred raw inputs of the same splits (the floor to beat)",
            )


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
    p.add_argument(
        "--recipe",
        default=None,
        metavar="FILE_OR_MODULE:FUNCTION",
        help="import this recipe for its registrations instead of the one the run recorded "
        "(a recipe that moved; never one inside the run directory)",
    )


def _load(args: argparse.Namespace):
    """(cfg, objective, device) of the run, or an exit code after printing why not."""
    from nepa.config import ConfigError, apply_overrides, load_recipe
    from nepa.device import pick_device
    from nepa.eval.load import load_run
    from nepa.train.checkpoint import CheckpointError
    from nepa.train.rundir import RunDirError

    try:
        cfg, objective = load_run(args.run_dir, random_init=args.random_init, recipe=args.recipe)
        if args.data:
            data_cfg, _ = load_recipe(args.data)
            cfg = cfg.model_copy(update={"data": data_cfg.data})
        bad = [o for o in args.overrides if not o.startswith(("eval.", "data."))]
        if bad:
            raise ConfigError(
                f"only eval.* and data.* keys can be overridden at evaluation, got {bad}"
            )
        cfg = apply_overrides(cfg, args.overrides)
        device = pick_device(args.device or "auto")
    except (ConfigError, FileNotFoundError, CheckpointError, RunDirError, ValueError) as e:
        print(f"nepa eval: {e}", file=sys.stderr)
        return 2
    return cfg, objective, device


def run_protocol(args: argparse.Namespace) -> int:
    from nepa.eval.run import evaluate, feature_store, knn_sweep, raw_input_knn
    from nepa.eval.store import FEATURES

    loaded = _load(args)
    if isinstance(loaded, int):
        return loaded
    cfg, objective, device = loaded
    from nepa.eval.load import weights_info

    # which weights were evaluated (the final export, or a checkpoint of an unfinished run)
    init = {"random_init": args.random_init}
    weights = None if args.random_init else weights_info(args.run_dir)
    # features extracted once per weights and data, kept in the run directory for the next
    # protocol, sweep or comparison
    store = feature_store(cfg, objective, device, folder=Path(args.run_dir) / FEATURES)
    try:
        if getattr(args, "sweep", False):
            depth = objective.backbone().depth
            results = [
                {"protocol": "knn", **init, **r}
                for r in knn_sweep(
                    cfg,
                    objective,
                    device,
                    layers=list(range(1, depth + 1)),
                    pools=["mean", "last", "start", "grid2", "grid4"],
                    attns=["causal", "bidirectional"],
                    store=store,
                )
            ]
            print(sweep_table(results))
        elif getattr(args, "raw_pixels", False):
            results = [{**raw_input_knn(cfg), "random_init": False}]
            weights = None  # the raw inputs: no model
        else:
            results = [
                evaluate(
                    args.protocol,
                    cfg,
                    objective,
                    device,
                    random_init=args.random_init,
                    store=store,
                )
            ]
    except ValueError as e:  # a setting that does not fit this run (a layer, a pooling...)
        print(f"nepa eval: {e}", file=sys.stderr)
        return 2
    finally:
        store.flush()  # the features files written in the background
    results = [{**r, "weights": weights} for r in results]
    if weights is not None and weights["step"] is not None:
        print(
            f"nepa eval: {args.run_dir} has no model.safetensors (an unfinished run?): evaluated "
            f"{weights['file']} (step {weights['step']})",
            file=sys.stderr,
        )
    for r in results:
        print(json.dumps(r))
    if args.json:
        many = getattr(args, "sweep", False)
        args.json.write_text(json.dumps(results if many else results[0], indent=2) + "\n")
    return 0


def sweep_table(results: list[dict]) -> str:
    """kNN top-1 (%) per (attn, pool) row and layer column, as a Markdown table."""
    layers = sorted({r["layer"] for r in results})
    rows: dict[tuple[str, str], dict[int, float]] = {}
    for r in results:
        rows.setdefault((r["attn"], r["pool"]), {})[r["layer"]] = r["top1"]
    init = " (random init)" if results and results[0].get("random_init") else ""
    lines = [
        f"| kNN top-1 %{init} | " + " | ".join(f"block {l}" for l in layers) + " |",
        "|---|" + "---|" * len(layers),
    ]
    for (attn, pool), by_layer in rows.items():
        cells = " | ".join(f"{100 * by_layer[l]:.2f}" for l in layers)
        lines.append(f"| {attn}, {pool} | {cells} |")
    return "\n".join(lines)
