"""``nepa train MODULE_OR_FILE:FUNCTION [--set key=value ...] [--out DIR] [--resume|--overwrite]``.

Exit status: 0 finished; 75 stopped before the last step but resumable (SIGTERM, Ctrl-C, too
much bad data, a non-finite loss after a checkpoint, a full disk): rerun with --resume;
1 failed; 2 a bad config, recipe or data path."""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

from nepa.cli import add_overrides

log = logging.getLogger("nepa")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="pretrain from a recipe", description=__doc__)
    p.add_argument(
        "recipe",
        help="MODULE_OR_FILE:FUNCTION returning a nepa.RunConfig, e.g. recipes/cifar10.py:small",
    )
    add_overrides(p, "--set optim.lr=3e-4")
    p.add_argument(
        "--out", type=Path, default=None, help="run directory (default: runs/<name>-<time>)"
    )
    p.add_argument(
        "--resume", action="store_true", help="continue exactly from the latest checkpoint in --out"
    )
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace the run already in --out (its config, weights, metrics and checkpoints)",
    )
    p.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from nepa.config import ConfigError, load_recipe
    from nepa.data.shards.codecs import PickleMemberError
    from nepa.data.shards.health import BadDataError
    from nepa.data.shards.manifest import ShardSourceError
    from nepa.train.checkpoint import CheckpointError, DiskFullError, list_checkpoints
    from nepa.train.resume import EXIT_RESUMABLE
    from nepa.train.rundir import RunDirError
    from nepa.train.trainer import NonFiniteLossError, train

    try:
        cfg, canonical = load_recipe(args.recipe, args.overrides)
    except ConfigError as e:
        if getattr(args, "debug", False) and e.__cause__ is not None:
            raise  # the recipe's own error, with its traceback
        print(f"nepa train: {e}", file=sys.stderr)
        return 2
    if args.print_config:
        print(json.dumps(cfg.model_dump(mode="json"), indent=2))
        return 0
    if args.resume and args.out is None:
        print("nepa train: --resume needs --out DIR (the run to continue)", file=sys.stderr)
        return 2
    if args.resume and args.overwrite:
        print(
            "nepa train: --resume continues a run, --overwrite replaces it: pick one",
            file=sys.stderr,
        )
        return 2
    out = args.out or Path("runs") / f"{cfg.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    try:
        result = train(
            cfg,
            out,
            recipe=canonical,
            resume=args.resume,
            progress=not args.no_progress,
            overwrite=args.overwrite,
        )
    except (BadDataError, NonFiniteLossError, DiskFullError) as e:  # stopped, resumable
        print(f"nepa train: {e}", file=sys.stderr)
        return EXIT_RESUMABLE if list_checkpoints(out / "checkpoints") else 1
    except (RunDirError, CheckpointError, PickleMemberError, ShardSourceError) as e:
        print(f"nepa train: {e}", file=sys.stderr)
        return 1
    except (ConfigError, FileNotFoundError) as e:  # a bad value or a missing data path
        print(f"nepa train: {e}", file=sys.stderr)
        return 2
    if result.stopped_by != "completed":
        log.warning(
            "stopped at step %d of %d (%s): continue with `nepa train %s --out %s --resume`",
            result.step,
            cfg.train.steps,
            result.stopped_by,
            args.recipe,
            out,
        )
        return EXIT_RESUMABLE
    log.info("finished at step %d; run directory: %s", result.step, out)
    return 0
