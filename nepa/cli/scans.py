"""``nepa scans``: list the registered scan orders and show one on a grid (text, JSON or PNG).

nepa scans list
nepa scans show --grid 8x8 --order hilbert [--seed 0] [--json] [--png FILE]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from nepa.encoders.scans import SCANS, draw_path_png, render_grid, scan_order
from nepa.registry import RegistryError

GRID_HELP = "N (1-D), HxW (2-D) or TxHxW (3-D, time-major), positive integers, e.g. 8x8"


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``scans`` with its ``list`` and ``show`` subcommands."""
    parser = subparsers.add_parser("scans", help="list scan orders or show one on a grid")
    sub = parser.add_subparsers(dest="scans_command")
    parser.set_defaults(func=lambda args: _usage(parser))

    sub.add_parser("list", help="print the registered scan order names").set_defaults(func=_list)

    show = sub.add_parser("show", help="print (or draw) the visiting order on a grid")
    show.add_argument("--grid", required=True, help=f"grid shape: {GRID_HELP}")
    show.add_argument("--order", default="hilbert", help="scan order name (see `nepa scans list`)")
    show.add_argument("--seed", type=int, default=0, help="seed for random orders")
    show.add_argument("--json", action="store_true", help='print {"order": [...], "grid": [...]}')
    show.add_argument("--png", type=Path, metavar="FILE", help="also draw the path to this PNG")
    show.set_defaults(func=_show)


def parse_grid(text: str) -> tuple[int, ...]:
    """``"8x8"`` -> ``(8, 8)``; ``"16"`` -> ``(16,)``; raise ValueError saying the format."""
    parts = text.lower().split("x")
    if not 1 <= len(parts) <= 3 or not all(p.strip().isdigit() and int(p) > 0 for p in parts):
        raise ValueError(f"bad --grid {text!r}; expected {GRID_HELP}")
    return tuple(int(p) for p in parts)


def _usage(parser: argparse.ArgumentParser) -> int:
    parser.print_help(sys.stderr)
    return 2


def _list(args: argparse.Namespace) -> int:
    print("\n".join(SCANS.names()))
    return 0


def _show(args: argparse.Namespace) -> int:
    # Bad input is the user's to fix: one line on stderr and exit 2, as argparse does.
    try:
        SCANS.get(args.order)  # unknown name -> message listing the known ones
        grid = parse_grid(args.grid)
        order = scan_order(args.order, grid, seed=args.seed)
    except (RegistryError, ValueError) as e:
        print(f"nepa scans show: error: {e}", file=sys.stderr)
        return 2
    if args.png is not None:
        title = f"{args.order} {'x'.join(map(str, grid))}"
        try:
            draw_path_png(order, grid, args.png, title=title)
        except OSError as e:  # e.g. a missing folder: say so instead of a traceback
            print(f"nepa scans show: error: cannot write {args.png}: {e}", file=sys.stderr)
            return 1
    if args.json:
        print(json.dumps({"order": order.tolist(), "grid": list(grid)}))
    else:
        print(render_grid(order, grid))
    return 0
