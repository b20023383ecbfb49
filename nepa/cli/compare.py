"""``nepa compare RECIPE [RECIPE ...] --vary KEY=V1,V2 [--vary ...] [--ablate KEY=V ...]
[--seeds N] [--eval knn,linear] [--random-init] [--equal-flops] --out DIR``.

Trains the recipe once per (cell, seed), evaluates each run, and writes results.csv,
results.json, results.md, loss.png and accuracy.png to DIR. Several recipes are an axis of the
grid (e.g. NEPA, JEPA and the token baseline at one model size); ``--equal-flops`` sets each
one's train.steps so that its training FLOPs equal the first recipe's. Rerunning the same
command resumes: finished runs and evaluations are not redone.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from nepa.cli import add_overrides

log = logging.getLogger("nepa")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "compare",
        help="run a recipe over a grid of overrides and seeds; tables and plots",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "recipes",
        nargs="+",
        metavar="recipe",
        help="MODULE_OR_FILE:FUNCTION, e.g. recipes.cifar10:nepa_tiny; several: one axis of cells",
    )
    p.add_argument(
        "--vary",
        action="append",
        default=[],
        metavar="KEY=V1,V2",
        help="a config key and its values (repeatable; the grid is their product); "
        "KEY1+KEY2=V1,V2 sets both keys to each value",
    )
    p.add_argument(
        "--ablate",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="one change from the recipe (repeatable): cells are the recipe as is plus one per "
        "change (times the --vary grid), e.g. --ablate objective.stop_grad=false",
    )
    p.add_argument("--seeds", type=int, default=1, help="seeds 0..N-1 per cell (default 1)")
    p.add_argument(
        "--eval",
        default="knn",
        help="comma-separated protocols: knn, linear, attentive, finetune (default knn)",
    )
    p.add_argument(
        "--random-init",
        action="store_true",
        help="also evaluate each run's architecture at its seeded random init (columns <eval>@init)",
    )
    add_overrides(p, "--set train.steps=500 (applied to every cell)")
    p.add_argument(
        "--equal-flops",
        action="store_true",
        help="set each recipe's train.steps so its training FLOPs (measured on a few steps) "
        "equal the first recipe's",
    )
    p.add_argument("--out", type=Path, required=True, help="output directory (resumable)")
    p.add_argument("--progress", action="store_true", help="show a progress bar per run")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from nepa.compare.grid import cells, parse_ablation, parse_vary
    from nepa.compare.report import write_report
    from nepa.compare.runner import Comparison, Plan, check_plan
    from nepa.config import ConfigError, apply_overrides, load_recipe
    from nepa.train.checkpoint import CheckpointError

    try:
        if args.seeds < 1:
            raise ConfigError("--seeds must be at least 1")
        bases = {}
        for spec in args.recipes:
            cfg, canonical = load_recipe(spec, args.overrides)
            if canonical in bases:
                raise ConfigError(f"recipe {spec} is given twice")
            bases[canonical] = cfg
        if args.equal_flops:
            if len(bases) < 2:
                raise ConfigError("--equal-flops needs two or more recipes to equalise")
            if args.vary or args.ablate:
                raise ConfigError(
                    "--equal-flops sets each recipe's steps from its own FLOPs; --vary and "
                    "--ablate would change the compute of some cells: give the variants as "
                    "recipes, or drop --equal-flops"
                )
            from nepa.compare.flops import equal_flops_steps

            steps = equal_flops_steps(bases, log=log.info)
            bases = {s: apply_overrides(c, [f"train.steps={steps[s]}"]) for s, c in bases.items()}
        base = next(iter(bases.values()))
        varies = [parse_vary(v, base) for v in args.vary]
        ablations = [parse_ablation(a, base) for a in args.ablate]
        plan = Plan(
            recipe=next(iter(bases)),
            overrides=tuple(args.overrides),
            cells=tuple(cells(varies, ablations, list(bases))),
            seeds=tuple(range(args.seeds)),
            evals=tuple(e.strip() for e in args.eval.split(",") if e.strip()),
            random_init=args.random_init,
            recipes=tuple(bases) if len(bases) > 1 else (),
            equal_flops=args.equal_flops,
        )
        comp = Comparison(plan, bases, args.out, progress=args.progress)
        check_plan(args.out, plan)
    except ConfigError as e:
        print(f"nepa compare: {e}", file=sys.stderr)
        return 2
    n = len(plan.runs())
    log.info(
        "compare: %d cells x %d seeds = %d runs -> %s", len(plan.cells), args.seeds, n, args.out
    )
    try:
        finished = comp.run_all(on_done=lambda: write_report(comp))
    except (ConfigError, CheckpointError) as e:
        print(f"nepa compare: {e}", file=sys.stderr)
        return 1
    files = write_report(comp)
    print((args.out / "results.md").read_text())
    log.info("wrote %s", ", ".join(str(f) for f in files))
    return 0 if finished else 1
