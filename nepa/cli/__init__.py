"""The ``nepa`` command line: one module per subcommand, each exposing ``register(subparsers)``.

A subcommand's ``register`` adds its parser and sets ``func`` (called with the parsed args,
returning an exit code).
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys

SUBCOMMANDS = ["train", "eval", "compare", "viz", "scans", "demo", "bench", "shards"]


def add_overrides(p: argparse.ArgumentParser, example: str) -> None:
    """The ``--set KEY=VALUE`` option shared by subcommands (repeatable; re-validated)."""
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help=f"override a config value (repeatable), e.g. {example}",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="nepa", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="store_true", help="print the version and exit")
    sub = parser.add_subparsers(dest="command")
    for name in SUBCOMMANDS:
        try:
            module = importlib.import_module(f"nepa.cli.{name}")
        except ModuleNotFoundError as e:
            if e.name != f"nepa.cli.{name}":
                raise
            continue
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    # Under torchrun only rank 0 logs below WARNING (STYLE.md: log on rank 0 only).
    level = logging.INFO if os.environ.get("RANK", "0") == "0" else logging.WARNING
    logging.basicConfig(
        level=level,
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
        datefmt="%H:%M:%S",
    )
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.version:
        import nepa

        print(nepa.__version__)
        return 0
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
