"""``nepa shards``: write a dataset as WebDataset shards with a manifest, check them, list them.

nepa shards write SOURCE OUT_DIR [--kind KIND] [--split train] [--shard-size 1000]
                  [--shuffle-seed 0 | --no-shuffle]
nepa shards verify SOURCE [--split NAME ...] [--json FILE|-] [--allow-pickle]
nepa shards ls SOURCE
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tarfile

from nepa.cli import usage
from nepa.data.shards.manifest import read_manifest
from nepa.data.shards.sources import SOURCES, sources_help
from nepa.data.shards.verify import summary, verify_shards
from nepa.data.shards.write import write_source

log = logging.getLogger(__name__)


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``shards`` with its ``write``, ``verify`` and ``ls`` subcommands."""
    parser = subparsers.add_parser("shards", help="write, verify or list WebDataset shards")
    sub = parser.add_subparsers(dest="shards_command")
    parser.set_defaults(func=lambda args: usage(parser))

    w = sub.add_parser(
        "write",
        help="write one split of a dataset as shards + manifest.json",
        epilog=sources_help(),
    )
    w.add_argument(
        "source",
        metavar="SOURCE",
        help="an ImageFolder folder/tar, an .npz, or an audio folder/tar",
    )
    w.add_argument(
        "--kind",
        metavar="KIND",
        help=f"source kind ({', '.join(SOURCES.names())}; default: recognised from SOURCE)",
    )
    w.add_argument(
        "out_dir",
        metavar="OUT_DIR",
        help="folder for the shards and manifest.json (other splits kept)",
    )
    w.add_argument("--split", default="train", help="which split to write (default: train)")
    w.add_argument(
        "--shard-size", type=int, default=1000, metavar="N", help="samples per shard (default 1000)"
    )
    w.add_argument(
        "--shuffle-seed",
        type=int,
        default=0,
        metavar="SEED",
        help="seed of the sample order (default 0)",
    )
    w.add_argument("--no-shuffle", action="store_true", help="keep the source's sorted order")
    w.add_argument("--progress", action="store_true", help="progress bar even when not on a tty")
    w.set_defaults(func=_write)

    v = sub.add_parser("verify", help="decode every sample and report bad ones (exit 1 if any)")
    v.add_argument(
        "source", metavar="SOURCE", help="a shard folder (with manifest.json), template or pattern"
    )
    v.add_argument("--split", action="append", help="split to check (repeatable; default all)")
    v.add_argument("--json", metavar="FILE", help="write the full report as JSON ('-': stdout)")
    v.add_argument("--allow-pickle", action="store_true", help="drop pickle members, don't report")
    v.add_argument("--progress", action="store_true", help="progress bar even when not on a tty")
    v.set_defaults(func=_verify)

    ls = sub.add_parser("ls", help="print the splits, shards and counts of a manifest")
    ls.add_argument(
        "source", metavar="SOURCE", help="a shard folder, its manifest.json, or a {name} template"
    )
    ls.set_defaults(func=_ls)


def _progress(args: argparse.Namespace) -> bool:
    return bool(args.progress or sys.stderr.isatty())


def _error(command: str, e: BaseException) -> int:
    # Bad input is the user's to fix: one line on stderr and exit 2, as argparse does.
    message = e.args[0] if isinstance(e, KeyError) and e.args else e  # KeyError quotes its text
    print(f"nepa shards {command}: error: {message}", file=sys.stderr)
    return 2


def _write(args: argparse.Namespace) -> int:
    seed = None if args.no_shuffle else args.shuffle_seed
    try:
        info = write_source(
            args.source,
            args.out_dir,
            split=args.split,
            shard_size=args.shard_size,
            shuffle_seed=seed,
            progress=_progress(args),
            kind=args.kind,
        )
    except (OSError, KeyError, ValueError, tarfile.TarError) as e:
        return _error("write", e)
    print(
        f"{args.out_dir}: split {args.split!r}, {info.samples} samples in {len(info.shards)} shard(s)"
    )
    return 0


def _verify(args: argparse.Namespace) -> int:
    try:
        report = verify_shards(
            args.source, args.split, allow_pickle=args.allow_pickle, progress=_progress(args)
        )
    except (OSError, KeyError, ValueError) as e:
        return _error("verify", e)
    text = json.dumps(report, indent=2)
    if args.json == "-":
        print(text)
    else:
        if args.json:
            with open(args.json, "w", encoding="utf-8") as f:
                f.write(text + "\n")
        print(summary(report))
    return 0 if report["ok"] else 1


def _ls(args: argparse.Namespace) -> int:
    try:
        manifest, _ = read_manifest(args.source)
    except (OSError, ValueError) as e:
        return _error("ls", e)
    classes = "" if manifest.classes is None else f", {len(manifest.classes)} classes"
    print(f"{args.source}: {manifest.modality}{classes}")
    for name, info in sorted(manifest.splits.items()):
        print(
            f"{name}: {info.samples} samples in {len(info.shards)} shard(s), fields {info.fields}"
        )
        for s in info.shards:
            print(f"  {s.name}  {s.samples:>8d} samples  {s.bytes / 1e6:8.1f} MB")
    return 0
