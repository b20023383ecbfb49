"""``nepa tokenizer fit RECIPE [--set key=value ...] --out FILE``: fit the discrete baseline's
codebook (k-means over the encoder's raw patches of the recipe's training data) and save it.

Train with it by ``--set objective.tokenizer=FILE``; the run refuses a file fitted for another
codebook size, patch or encoder. Without one, training fits the same codebook itself.
"""

from __future__ import annotations

import argparse
import sys
from functools import partial
from pathlib import Path

from nepa.cli import add_overrides, usage


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("tokenizer", help="fit the token baseline's codebook", description=__doc__)
    actions = p.add_subparsers(dest="action")
    fit = actions.add_parser("fit", help="fit a k-means codebook and save it", description=__doc__)
    fit.add_argument("recipe", help="MODULE_OR_FILE:FUNCTION with objective.kind=token")
    add_overrides(fit, "--set objective.codes=512")
    fit.add_argument("--out", type=Path, required=True, help="the tokenizer file (.safetensors)")
    fit.set_defaults(func=_fit)
    p.set_defaults(func=lambda args: usage(p))


def _fit(args: argparse.Namespace) -> int:
    from nepa.config import ConfigError, load_recipe
    from nepa.data.base import sample_batches
    from nepa.objectives.token import TokenObjective
    from nepa.train.build import build_objective

    try:
        cfg, _ = load_recipe(args.recipe, args.overrides)
        objective = build_objective(cfg)
        if not isinstance(objective, TokenObjective):
            raise ConfigError(
                f"objective {cfg.objective.kind!r} has no tokenizer: use a recipe with "
                "objective.kind=token (e.g. recipes/cifar10.py:token_tiny)"
            )
        if cfg.objective.tokenizer is not None:
            raise ConfigError("objective.tokenizer is set: it names a fitted file already")
        objective.fit(partial(sample_batches, cfg.data))
    except (ConfigError, FileNotFoundError, ValueError) as e:
        print(f"nepa tokenizer fit: error: {e}", file=sys.stderr)
        return 2
    args.out.parent.mkdir(parents=True, exist_ok=True)
    objective.tokenizer().save(args.out)
    print(f"{args.out}: {cfg.objective.codes} codes of {objective.meta['patch_dim']} values")
    return 0
