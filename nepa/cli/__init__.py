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

SUBCOMMANDS = ["train", "eval", "compare", "viz", "scans", "demo", "bench", "shards", "tokenizer"]


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


def usage(parser: argparse.ArgumentParser) -> int:
    """A command group called without its action: its help on stderr, exit status 2."""
    parser.print_help(sys.stderr)
    return 2


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="nepa",
        description="nepa: self-supervised pretraining by next-embedding prediction. "
        "Train from a recipe, evaluate a run, compare scan orders and ablations.",
        epilog="Run `nepa COMMAND --help` for a command's options; `nepa demo` for a first run. "
        "--debug (anywhere on the line) shows the full traceback of an unexpected error.",
    )
    parser.add_argument("--version", action="store_true", help="print the version and exit")
    parser.add_argument(
        "--debug", action="store_true", help="show the full traceback of an unexpected error"
    )
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
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv  # accepted anywhere on the line, not only before the subcommand
    args = parser.parse_args([a for a in argv if a != "--debug"])
    args.debug = debug
    if args.version:
        import nepa

        print(nepa.__version__)
        return 0
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except Exception as e:  # one line for a user; the traceback behind --debug
        if args.debug:
            raise
        print(
            f"nepa {args.command}: error: {type(e).__name__}: {e} (rerun with --debug for the "
            "traceback)",
            file=sys.stderr,
        )
        return 1


if __name__ == "__main__":
    sys.exit(main())
