"""A folder of ``.npy`` files as a cache entry: written atomically, read without unpickling.

Several processes (e.g. the ranks of one run) may build the same entry at once; each writes a
private temporary folder and renames it into place, so a reader never sees half an entry.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import numpy as np

from nepa.data.paths import cache_root
from nepa.io import atomic_dir

log = logging.getLogger(__name__)

Arrays = dict[str, np.ndarray]


def load_or_build(name: str, names: tuple[str, ...], build: Callable[[], Arrays]) -> Arrays:
    """Return the arrays ``names`` of cache entry ``name``, calling ``build`` only on a miss."""
    entry = cache_root() / name
    if all((entry / f"{n}.npy").is_file() for n in names):
        log.debug("data cache hit: %s", entry)
        return {n: np.load(entry / f"{n}.npy", allow_pickle=False) for n in names}
    arrays = build()
    missing = set(names) - set(arrays)
    if missing:
        raise KeyError(f"cache builder for {name} did not return {sorted(missing)}")
    _write(entry, arrays)
    return arrays


def _write(entry: Path, arrays: Arrays) -> None:
    try:
        with atomic_dir(entry) as tmp:
            for n, a in arrays.items():
                np.save(tmp / f"{n}.npy", a, allow_pickle=False)
        log.info("wrote data cache %s", entry)
    except OSError as e:
        if not entry.is_dir():
            raise
        log.debug("data cache %s written concurrently by another process (%s)", entry, e)
