"""``nepa scans``: list the registered scan orders and show one on a grid (text, JSON or PNG).

nepa scans list
nepa scans show --grid 8x8 --order hilbert [--seed 0] [--json] [--png FILE]
nepa scans show --grid 8x8 --order all [--png FILE]   (every registered order, 1-D / 2-D grids)
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

from nepa.cli import usage
from nepa.encoders.scans import SCANS, render_grid, scan_order
from nepa.registry import RegistryError
from nepa.viz.scans import draw_path_png

GRID_HELP = "N (1-D), HxW (2-D) or TxHxW (3-D, time-major), positive integers, e.g. 8x8"
ALL = "all"  # --order all: every registered order


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``scans`` with its ``list`` and ``show`` subcommands."""
    parser = subparsers.add_parser("scans", help="list scan orders or show one on a grid")
    sub = parser.add_subparsers(dest="scans_command")
    parser.set_defaults(func=lambda args: usage(parser))

    sub.add_parser("list", help="print the registered scan order names").set_defaults(func=_list)

    show = sub.add_parser("show", help="print (or draw) the visiting order on a grid")
    show.add_argument("--grid", required=True, help=f"grid shape: {GRID_HELP}")
    show.add_argument(
        "--order",
        default="hilbert",
        help=f"scan order name (see `nepa scans list`), or '{ALL}' for every one side by side",
    )
    show.add_argument("--seed", type=int, default=0, help="seed for random orders")
    show.add_argument("--json", action="store_true", help='print {"order": [...], "grid": [...]}')
    show.add_argument("--png", type=Path, metavar="FILE", help="also draw the path to this PNG")
    show.set_defaults(func=_show)


MAX_CELLS = 1_000_000  # a 1000x1000 grid: beyond it, a drawing or table says nothing


def parse_grid(text: str) -> tuple[int, ...]:
    """``"8x8"`` -> ``(8, 8)``; ``"16"`` -> ``(16,)``; raise ValueError saying the format."""
    parts = text.lower().split("x")
    if not 1 <= len(parts) <= 3 or not all(p.strip().isdigit() and int(p) > 0 for p in parts):
        raise ValueError(f"bad --grid {text!r}; expected {GRID_HELP}")
    grid = tuple(int(p) for p in parts)
    if math.prod(grid) > MAX_CELLS:
        raise ValueError(
            f"--grid {text} has {math.prod(grid):,} cells; at most {MAX_CELLS:,} can be shown"
        )
    return grid


def _list(args: argparse.Namespace) -> int:
    print("\n".join(SCANS.names()))
    return 0


def _show(args: argparse.Namespace) -> int:
    if args.order == ALL:
        return _show_all(args)
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


def _show_all(args: argparse.Namespace) -> int:
    """Every registered order: one figure with a panel each, text tables, or one JSON object."""
    try:
        grid = parse_grid(args.grid)
        if len(grid) == 3:
            raise ValueError(
                f"--order {ALL} takes 1-D or 2-D grids, got {args.grid}; show a 3-D grid one "
                "order at a time (--order NAME)"
            )
        orders = {n: scan_order(n, grid, seed=args.seed) for n in SCANS.names()}
    except ValueError as e:
        print(f"nepa scans show: error: {e}", file=sys.stderr)
        return 2
    if args.png is not None:
        from nepa.viz.figures import save_png, scans_figure

        try:
            save_png(scans_figure(grid, seed=args.seed), args.png)
        except OSError as e:
            print(f"nepa scans show: error: cannot write {args.png}: {e}", file=sys.stderr)
            return 1
    if args.json:
        print(
            json.dumps({"grid": list(grid), "orders": {n: o.tolist() for n, o in orders.items()}})
        )
    else:
        print("\n\n".join(f"{n}\n{render_grid(o, grid)}" for n, o in orders.items()))
    return 0
