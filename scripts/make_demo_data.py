"""Build the small real-image demo set shipped in the package (``nepa/assets/demo/``).

Writes ``demo.npz`` (``x_train`` (N, H, W[, C]) uint8, ``y_train`` (N,) int64, ``x_test``,
``y_test``, ``classes`` (K,) unicode; all loadable with ``allow_pickle=False``) and
``PROVENANCE.json`` (source file and sha256, license, selection rule, counts, command line).

Examples::

    python scripts/make_demo_data.py --source mnist --fit-bytes 4.8e6
    python scripts/make_demo_data.py --source cifar10 --n-train 1000 --n-test 200 --out /tmp/demo

The source is read from ``$NEPA_DATA_DIR`` (default ``../shared/data`` beside the project).
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import io
import json
import os
import shlex
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
ASSET_DIR = ROOT / "nepa" / "assets" / "demo"
MAX_ASSET_BYTES = 5_000_000  # the shipped asset folder must stay under 5 MB

SOURCES = {
    "mnist": {
        "file": "mnist.npz",
        "url": "http://yann.lecun.com/exdb/mnist/",
        "license": "CC BY-SA 3.0 (https://creativecommons.org/licenses/by-sa/3.0/)",
        "attribution": "MNIST database of handwritten digits, Yann LeCun, Corinna Cortes and "
        "Christopher J.C. Burges. This subset is a derived work under the same license.",
    },
    "cifar10": {
        "file": "cifar10-png.tar.gz",
        "url": "https://www.cs.toronto.edu/~kriz/cifar.html",
        "license": "CIFAR-10 terms: free for research use; cite Alex Krizhevsky, Learning "
        "Multiple Layers of Features from Tiny Images, Technical Report, 2009.",
        "attribution": "CIFAR-10, Alex Krizhevsky, Vinod Nair and Geoffrey Hinton (2009).",
    },
}

Split = tuple[np.ndarray, np.ndarray]  # images (N, H, W[, C]) uint8, labels (N,) int64


def load_source(source: str, path: Path) -> tuple[Split, Split, list[str]]:
    """Full (train, test) splits and class names of one source dataset."""
    if source == "mnist":
        with np.load(path, allow_pickle=False) as f:
            train, test = (f["x_train"], f["y_train"]), (f["x_test"], f["y_test"])
        return train, test, [str(d) for d in range(10)]
    from nepa.data.folder import read_image_folder  # decodes once, then uses the nepa cache

    tr, te = read_image_folder(path, "train"), read_image_folder(path, "test")
    return (tr.images, tr.labels), (te.images, te.labels), tr.classes


def select(labels: np.ndarray, n: int, seed: int, n_classes: int) -> np.ndarray:
    """Class-balanced seeded pick of ``n`` indices, in source order: ``n // K`` per class (the
    first ``n % K`` classes get one more), each a seeded permutation's prefix."""
    rng = np.random.default_rng(seed)
    per_class = [n // n_classes + (c < n % n_classes) for c in range(n_classes)]
    picked = [rng.permutation(np.flatnonzero(labels == c))[:k] for c, k in enumerate(per_class)]
    if any(len(p) < k for p, k in zip(picked, per_class, strict=True)):
        raise SystemExit(f"not enough images per class for {n} (need {max(per_class)} per class)")
    return np.sort(np.concatenate(picked))


def build_npz(
    train: Split, test: Split, classes: list[str], n_train: int, n_test: int, seed: int
) -> tuple[bytes, dict]:
    """Compressed npz bytes of the subset, and the per-class counts."""
    k = len(classes)
    i_tr = select(train[1], n_train, seed, k)
    i_te = select(test[1], n_test, seed + 1, k)
    arrays = {
        "x_train": train[0][i_tr],
        "y_train": train[1][i_tr].astype(np.int64),
        "x_test": test[0][i_te],
        "y_test": test[1][i_te].astype(np.int64),
        "classes": np.array(classes, dtype=np.str_),
    }
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    counts = {
        s: {
            classes[c]: int(n)
            for c, n in zip(*np.unique(arrays[f"y_{s}"], return_counts=True), strict=True)
        }
        for s in ("train", "test")
    }
    return buf.getvalue(), {
        "counts_per_class": counts,
        "image_shape": list(arrays["x_train"].shape[1:]),
    }


def fit_counts(
    train: Split, test: Split, classes: list[str], seed: int, max_bytes: float
) -> tuple[int, int]:
    """Largest (n_train, n_test) with test = 1/6 of the total, a multiple of 6 * K images,
    whose npz fits in ``max_bytes`` (binary search; compressed size grows with the count)."""
    unit = 6 * len(classes)
    lo, hi = 0, min(len(train[1]) // 5, len(test[1])) * 6 // unit
    while lo < hi:
        mid = (lo + hi + 1) // 2
        n = mid * unit
        size = len(build_npz(train, test, classes, n * 5 // 6, n // 6, seed)[0])
        print(f"  {n * 5 // 6}/{n // 6}: {size / 1e6:.3f} MB", file=sys.stderr)
        lo, hi = (mid, hi) if size <= max_bytes else (lo, mid - 1)
    if lo == 0:
        raise SystemExit(f"not even {unit} images fit in {max_bytes:.0f} bytes")
    return lo * unit * 5 // 6, lo * unit // 6


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def provenance(
    args: argparse.Namespace, src: Path, npz: bytes, info: dict, n: tuple[int, int]
) -> dict:
    meta = SOURCES[args.source]
    return {
        "dataset": args.source,
        "source_file": src.name,
        "source_sha256": sha256(src),
        "source_url": meta["url"],
        "license": meta["license"],
        "attribution": meta["attribution"],
        "selection": (
            "per split, class-balanced: n // K images per class (the first n % K classes one "
            "more), the first of a numpy default_rng(seed) permutation of that class's indices "
            "(classes in order, train with seed, test with seed + 1), kept in source order. "
            "Source order: the npz order (mnist) or sorted (class, file name) (cifar10)."
        ),
        "seed": args.seed,
        "n_train": n[0],
        "n_test": n[1],
        **info,
        "demo_npz_sha256": hashlib.sha256(npz).hexdigest(),
        "demo_npz_bytes": len(npz),
        "command": shlex.join(["python", "scripts/make_demo_data.py", *sys.argv[1:]]),
        "script": "scripts/make_demo_data.py",
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d"),
    }


def write(out: Path, npz: bytes, prov: dict) -> None:
    """Replace ``out``/demo.npz and PROVENANCE.json; refuse if the folder would pass 5 MB."""
    prov_bytes = (json.dumps(prov, indent=2) + "\n").encode()
    out.mkdir(parents=True, exist_ok=True)
    others = sum(
        p.stat().st_size
        for p in out.rglob("*")
        if p.is_file() and p.name not in ("demo.npz", "PROVENANCE.json")
    )
    total = others + len(npz) + len(prov_bytes)
    assert total <= MAX_ASSET_BYTES, f"{out} would hold {total} bytes > {MAX_ASSET_BYTES}"
    (out / "demo.npz").write_bytes(npz)
    (out / "PROVENANCE.json").write_bytes(prov_bytes)
    print(f"wrote {out}: demo.npz {len(npz) / 1e6:.3f} MB, folder {total / 1e6:.3f} MB")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--source", choices=sorted(SOURCES), default="mnist")
    p.add_argument("--n-train", type=int, help="train images (with --n-test)")
    p.add_argument("--n-test", type=int, help="test images (with --n-train)")
    p.add_argument(
        "--fit-bytes",
        type=float,
        help="instead of counts: the largest set (test = 1/6) whose npz fits in this many bytes",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=ASSET_DIR, help=f"folder (default {ASSET_DIR})")
    args = p.parse_args(argv)
    if (args.fit_bytes is None) == (args.n_train is None or args.n_test is None):
        p.error("give either --n-train and --n-test, or --fit-bytes")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    data_dir = Path(os.environ.get("NEPA_DATA_DIR") or ROOT.parent / "shared" / "data")
    src = data_dir / SOURCES[args.source]["file"]
    if not src.is_file():
        raise SystemExit(f"{src} not found; set NEPA_DATA_DIR to the folder holding it")
    train, test, classes = load_source(args.source, src)
    n = (args.n_train, args.n_test)
    if args.fit_bytes is not None:
        n = fit_counts(train, test, classes, args.seed, args.fit_bytes)
    npz, info = build_npz(train, test, classes, *n, args.seed)
    write(args.out, npz, provenance(args, src, npz, info, n))


if __name__ == "__main__":
    main()
