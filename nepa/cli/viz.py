"""``nepa viz {attention,similarity} RUN_DIR IMAGE --png FILE``: pictures of one image.

IMAGE is a PNG/JPEG file or SPLIT:N (e.g. test:0) for item N of the run's data; it goes through
the run's eval transform. Patches are given as a row-major index (``5``) or ``row,col``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

MASKS = ["causal", "bidirectional"]


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``viz`` with its ``attention`` and ``similarity`` subcommands."""
    p = sub.add_parser("viz", help="draw attention or embedding-similarity maps of one image")
    vsub = p.add_subparsers(dest="viz_command", required=True)
    att = vsub.add_parser(
        "attention",
        help="attention of query patches over all patches at one layer",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _common(att, "--query", "query patches (default: centre and corners)")
    att.add_argument("--head", type=int, default=None, help="one head (default: mean of heads)")
    att.set_defaults(func=run_attention)
    sim = vsub.add_parser(
        "similarity",
        help="cosine similarity of patches' embeddings z and layer outputs h to all patches",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _common(sim, "--patch", "patches to compare with all others (default: centre and corners)")
    sim.set_defaults(func=run_similarity)


def _common(p: argparse.ArgumentParser, cells_flag: str, cells_help: str) -> None:
    p.add_argument("run_dir", type=Path, metavar="RUN_DIR")
    p.add_argument("image", metavar="IMAGE", help="PNG/JPEG file, or SPLIT:N such as test:0")
    p.add_argument("--png", type=Path, required=True, metavar="FILE", help="output PNG")
    p.add_argument("--layer", type=int, default=None, help="1-based block (default: the last)")
    p.add_argument(
        cells_flag, dest="cells", nargs="+", metavar="P", help=f"{cells_help}: index or row,col"
    )
    p.add_argument(
        "--attn", choices=MASKS, default=None, help="attention mask (default: the run's own)"
    )
    p.add_argument(
        "--random-init", action="store_true", help="the same architecture at its seeded random init"
    )


def _prepare(args: argparse.Namespace):
    """(model, image, cells, layer, title stem) from the arguments; raises VizError."""
    from nepa.viz import load_image_input, load_viz_model, parse_cells

    model = load_viz_model(args.run_dir, random_init=args.random_init)
    image = load_image_input(args.image, model.cfg.data)
    cells = parse_cells(args.cells, model.grid)
    layer = model.layer(args.layer)
    scan = getattr(model.cfg.encoder, "scan", None)  # image encoders name their scan order
    weights = "random init" if args.random_init else "trained"
    stem = f"{model.cfg.name} ({weights}{f', scan {scan}' if scan else ''}) | {image.name}"
    return model, image, cells, layer, stem


def _run(args: argparse.Namespace, draw) -> int:
    """Shared error handling: user errors exit 2, I/O errors 1, each one line on stderr."""
    from nepa.viz import VizError
    from nepa.viz.figures import save_png

    prog = f"nepa viz {args.viz_command}"
    try:
        fig = draw(*_prepare(args))
    except VizError as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return 1
    try:
        save_png(fig, args.png)
    except OSError as e:
        print(f"{prog}: error: cannot write {args.png}: {e}", file=sys.stderr)
        return 1
    print(args.png)
    return 0


def run_attention(args: argparse.Namespace) -> int:
    def draw(model, image, cells, layer, stem):
        from nepa.viz import attention_maps
        from nepa.viz.figures import attention_figure

        maps = attention_maps(
            model, image.x_CHW, cells=cells, layer=layer, attn=args.attn, head=args.head
        )
        heads = "mean of heads" if args.head is None else f"head {args.head}"
        title = f"{stem}\nlayer {layer}/{model.depth}, {maps.attn} attention, {heads}"
        return attention_figure(image, maps, title)

    return _run(args, draw)


def run_similarity(args: argparse.Namespace) -> int:
    def draw(model, image, cells, layer, stem):
        from nepa.viz import similarity_maps
        from nepa.viz.figures import similarity_figure

        maps = similarity_maps(model, image.x_CHW, cells=cells, layer=layer, attn=args.attn)
        title = f"{stem}\nlayer {layer}/{model.depth}, {maps.attn} attention"
        return similarity_figure(image, maps, title)

    return _run(args, draw)
