"""Scan orders: the 1-D reading order of a grid of patches (or frames x patches).

A scan is a pure function ``fn(grid, seed=0) -> order`` registered in :data:`SCANS`, where
``grid`` is the grid shape (``(N,)``, ``(H, W)`` or ``(T, H, W)``) and ``order`` is an int64
array of shape ``(prod(grid),)``: ``order[i]`` is the row-major (C order, ``np.ravel``) index
of the cell visited at step ``i``. Every order is a permutation of ``range(prod(grid))``.

3-D grids are read time-major: all cells of frame ``t`` come before any cell of frame ``t + 1``.

Use :func:`scan_order` rather than calling an entry directly: it validates the grid and checks
that the result is a permutation, so a user-registered scan cannot silently drop cells.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import lru_cache

import numpy as np
import torch

from nepa.registry import Registry

Grid = tuple[int, ...]
ScanFn = Callable[..., np.ndarray]  # fn(grid: Grid, seed: int = 0) -> (prod(grid),) int64

#: scan orders by name; entries are plain functions, registered without a config class
SCANS: Registry[ScanFn] = Registry("scan order")

# Which numbers of axes each built-in scan supports; only used to write helpful errors.
_BUILTIN_AXES: dict[str, tuple[int, ...]] = {
    "raster": (1, 2, 3),
    "column": (1, 2),
    "snake": (1, 2, 3),
    "zigzag": (1, 2),
    "hilbert": (1, 2, 3),
    "spiral": (1, 2),
    "random": (1, 2, 3),
}
_SUPPORTED_AXES = (1, 2, 3)


# --------------------------------------------------------------------------- public helpers


def scan_order(name: str, grid: Grid, seed: int = 0) -> np.ndarray:
    """The visiting order of scan ``name`` on ``grid``: int64 array of shape ``(prod(grid),)``.

    Raises ``RegistryError`` (listing the known names) for an unknown scan, ``ValueError`` for a
    malformed grid, an unsupported number of axes, or a scan that does not return a permutation.
    """
    fn = SCANS.get(name)
    grid = validate_grid(grid)
    order = np.asarray(fn(grid, seed=seed))
    _check_permutation(name, grid, order)
    return order.astype(np.int64, copy=False)


def scan_coords(name: str, grid: Grid, seed: int = 0) -> np.ndarray:
    """Grid coordinates of the visited cells in visiting order: int64 array ``(T, A)``.

    ``T = prod(grid)`` steps, ``A = len(grid)`` axes; row ``i`` is the cell visited at step ``i``.
    """
    order = scan_order(name, grid, seed)
    return np.stack(np.unravel_index(order, tuple(grid)), axis=-1).astype(np.int64)


def check_scan(name: str, grid: Grid | None = None, seed: int = 0) -> None:
    """ValueError naming the known orders unless ``name`` is registered (for config checks);
    with ``grid``, also unless the order can read that grid (e.g. 1-D or 3-D axes)."""
    if name not in SCANS:
        raise ValueError(f"unknown scan order {name!r}; known: {', '.join(SCANS.names())}")
    if grid is not None:
        try:
            scan_order(name, grid, seed)
        except ValueError as e:
            raise ValueError(f"encoder.scan={name!r}: {e}") from None


def scanned_grid(name: str, grid: Grid, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(order ``(T,)``, coords ``(T, A)``) as tensors: an encoder gathers its row-major tokens
    with ``emb[:, order]`` and hands the predictor ``coords``."""
    order = scan_order(name, grid, seed)
    coords = np.stack(np.unravel_index(order, tuple(grid)), axis=-1).astype(np.int64)
    return torch.from_numpy(order), torch.from_numpy(coords)


def inverse(order: np.ndarray) -> np.ndarray:
    """Inverse permutation ``(T,)``: ``inverse(order)[cell]`` is the step at which ``cell`` is read.

    Gathering tokens with ``x[:, order]`` and then with ``[:, inverse(order)]`` restores ``x``.
    """
    order = np.asarray(order)
    inv = np.empty_like(order, dtype=np.int64)
    inv[order] = np.arange(order.size, dtype=np.int64)
    return inv


def validate_grid(grid: Grid) -> Grid:
    grid = tuple(grid)
    if len(grid) not in _SUPPORTED_AXES:
        raise ValueError(
            f"scan orders support grids with 1, 2 or 3 axes ((N,), (H, W) or (T, H, W)); "
            f"got {len(grid)} axes: {grid}"
        )
    # bool is an int subclass but a grid of True/False is certainly a mistake
    if not all(isinstance(n, int | np.integer) and not isinstance(n, bool) and n > 0 for n in grid):
        raise ValueError(f"grid sizes must be positive integers, got {grid}")
    return tuple(int(n) for n in grid)


def _check_permutation(name: str, grid: Grid, order: np.ndarray) -> None:
    n = math.prod(grid)
    if order.shape != (n,) or not np.issubdtype(order.dtype, np.integer):
        raise ValueError(
            f"scan {name!r} on grid {grid} returned shape {order.shape} dtype {order.dtype}; "
            f"expected an integer array of shape ({n},)"
        )
    if not np.array_equal(np.sort(order), np.arange(n)):
        raise ValueError(f"scan {name!r} on grid {grid} did not return a permutation of range({n})")


def _check_axes(name: str, grid: Grid, supported: tuple[int, ...]) -> None:
    """Raise ValueError naming what is supported, and which scans handle this many axes."""
    if len(grid) in supported:
        return
    dims = " or ".join(", ".join(f"{a}-D" for a in supported).rsplit(", ", 1))
    others = [n for n, axes in _BUILTIN_AXES.items() if len(grid) in axes and n in SCANS]
    hint = f"; scans supporting {len(grid)}-D grids: {', '.join(others)}" if others else ""
    raise ValueError(f"scan {name!r} supports {dims} grids, got grid {tuple(grid)}{hint}")


def _as_2d(name: str, grid: Grid) -> tuple[int, int]:
    """(H, W) of a 1-D or 2-D grid; a 1-D grid (N,) is read as one row (1, N)."""
    _check_axes(name, grid, (1, 2))
    return (1, grid[0]) if len(grid) == 1 else (grid[0], grid[1])


def _time_major(grid: Grid, frame_order: np.ndarray, alternate: bool) -> np.ndarray:
    """Repeat a per-frame order ``(H*W,)`` over ``T`` frames -> ``(T*H*W,)``.

    With ``alternate`` every odd frame is read backwards, so the last cell of frame ``t`` and
    the first cell of frame ``t + 1`` are the same (h, w): the frame-to-frame step is one step
    in time, keeping 2-D neighbour paths 3-D neighbour paths.
    """
    t, h, w = grid
    frames = np.tile(frame_order, (t, 1))  # (T, H*W)
    if alternate:
        frames[1::2] = frames[1::2, ::-1]
    offsets = np.arange(t, dtype=np.int64)[:, None] * (h * w)  # (T, 1)
    return (frames + offsets).ravel()


# --------------------------------------------------------------------------- entries


@SCANS.register("raster")
def raster(grid: Grid, seed: int = 0) -> np.ndarray:
    """Row by row (C order): the identity, on 1-D, 2-D and 3-D (time-major) grids."""
    _check_axes("raster", grid, _BUILTIN_AXES["raster"])
    return np.arange(math.prod(grid), dtype=np.int64)


@SCANS.register("column")
def column(grid: Grid, seed: int = 0) -> np.ndarray:
    """Column by column, each top to bottom (Fortran order). 1-D: identity."""
    h, w = _as_2d("column", grid)
    return np.arange(h * w, dtype=np.int64).reshape(h, w).T.ravel()


def _snake_2d(h: int, w: int) -> np.ndarray:
    idx = np.arange(h * w, dtype=np.int64).reshape(h, w)
    idx[1::2] = idx[1::2, ::-1]  # odd rows right-to-left
    return idx.ravel()


@SCANS.register("snake")
def snake(grid: Grid, seed: int = 0) -> np.ndarray:
    """Boustrophedon rows: row 0 left-to-right, row 1 right-to-left, ...

    Every step is between 4-neighbours; 3-D: odd frames reversed, so every step is between
    6-neighbours (same cell in consecutive frames at frame boundaries). 1-D: identity.
    """
    _check_axes("snake", grid, _BUILTIN_AXES["snake"])
    if len(grid) == 3:
        return _time_major(grid, _snake_2d(grid[1], grid[2]), alternate=True)
    return _snake_2d(*_as_2d("snake", grid))


@SCANS.register("zigzag")
def zigzag(grid: Grid, seed: int = 0) -> np.ndarray:
    """JPEG zigzag over anti-diagonals ``r + c = d``, generalised to H x W rectangles.

    As in the JPEG 8x8 table (0, 1, 8, 16, 9, 2, ...): odd diagonals run down-left (row
    increasing), even diagonals run up-right (row decreasing). 1-D: identity.
    """
    h, w = _as_2d("zigzag", grid)
    r, c = np.divmod(np.arange(h * w, dtype=np.int64), w)
    d = r + c
    within = np.where(d % 2 == 1, r, -r)
    return np.lexsort((within, d)).astype(np.int64)  # last key is the primary one


def _spiral_2d(h: int, w: int) -> np.ndarray:
    # Peel the top row, then turn the rest counter-clockwise so that the next side to read
    # (right column, top to bottom) becomes the top row, read left to right. Views only.
    m = np.arange(h * w, dtype=np.int64).reshape(h, w)
    parts = []
    while m.size:
        parts.append(m[0])
        m = np.rot90(m[1:])
    return np.concatenate(parts)


@SCANS.register("spiral")
def spiral(grid: Grid, seed: int = 0) -> np.ndarray:
    """Clockwise from the top-left corner, outer ring inward; steps between 4-neighbours."""
    return _spiral_2d(*_as_2d("spiral", grid))


@SCANS.register("random")
def random_permutation(grid: Grid, seed: int = 0) -> np.ndarray:
    """Uniformly random permutation from ``np.random.default_rng(seed)``; same seed, same order."""
    _check_axes("random", grid, _BUILTIN_AXES["random"])
    return np.random.default_rng(seed).permutation(math.prod(grid)).astype(np.int64)


@SCANS.register("hilbert")
def hilbert(grid: Grid, seed: int = 0) -> np.ndarray:
    """Generalized Hilbert curve on any H x W rectangle (see :func:`_hilbert_2d`).

    Every step is between 4-neighbours, on every grid shape. 3-D: each frame a 2-D path, odd
    frames reversed, so every step is between 6-neighbours. 1-D: identity.
    """
    _check_axes("hilbert", grid, _BUILTIN_AXES["hilbert"])
    if len(grid) == 3:
        return _time_major(grid, _hilbert_2d(grid[1], grid[2]), alternate=True)
    return _hilbert_2d(*_as_2d("hilbert", grid)).copy()


# --------------------------------------------------------------------------- generalized Hilbert

Vec = tuple[int, int]  # (row, col)


@lru_cache(maxsize=64)
def _hilbert_2d(h: int, w: int) -> np.ndarray:
    """Row-major cell indices ``(H*W,)`` of a generalized Hilbert path on an H x W grid.

    Recursive rectangle splitting in the spirit of Červený's "gilbert": ``_fill`` walks an
    ``la x lb`` rectangle from its origin to the corner ``la - 1`` steps along the major axis.
    Checkerboard parity allows such a 4-neighbour (Hamiltonian) path only if ``la`` is even or
    both sides are odd; ``_fill`` builds one for every such rectangle (``la > 1`` unless
    ``lb == 1``) and splits it only into sub-rectangles of that class, so we only have to start
    in it: the major axis is the longer side, unless that side is odd and the other even, in
    which case the even side is major. Result: a path from (0, 0) to
    (0, W-1) or (H-1, 0) with every step between 4-neighbours, and no diagonal step on any
    grid shape (gilbert itself takes one diagonal step on odd x even grids).
    Cached (read-only); callers copy.
    """
    cols_major = w >= h
    longer, shorter = (w, h) if cols_major else (h, w)
    if longer % 2 == 1 and shorter % 2 == 0:
        cols_major = not cols_major  # an even major side keeps the path 4-connected
    cells: list[Vec] = []
    if cols_major:
        _fill(cells, (0, 0), (0, 1), w, (1, 0), h)
    else:
        _fill(cells, (0, 0), (1, 0), h, (0, 1), w)
    rc = np.asarray(cells, dtype=np.int64)  # (H*W, 2)
    order = rc[:, 0] * w + rc[:, 1]
    order.flags.writeable = False
    return order


def _at(p: Vec, u: Vec, k: int, v: Vec = (0, 0), m: int = 0) -> Vec:
    """The cell ``p + k*u + m*v``."""
    return (p[0] + k * u[0] + m * v[0], p[1] + k * u[1] + m * v[1])


def _fill(cells: list[Vec], p: Vec, ua: Vec, la: int, ub: Vec, lb: int) -> None:
    """Append a path over the cells ``p + i*ua + j*ub`` (``i < la``, ``j < lb``).

    ``ua``/``ub`` are unit vectors of the major/minor axis. When ``la`` is even or ``la`` and
    ``lb`` are both odd, and ``la > 1`` unless ``lb == 1`` (the only calls made, see
    :func:`_hilbert_2d`), the path runs from ``p`` to ``p + (la-1)*ua`` through 4-neighbours
    only. By induction: ``_split_long`` cuts the major into an even ``_even_half`` and a rest
    with ``la``'s parity; ``_split_three`` gives its two transposed pieces the even major
    ``_even_half(lb)`` (single cells when ``lb == 2``) and its middle piece the major ``la``
    with a minor of ``lb``'s parity; and each piece ends next to where the next one starts.
    """
    if lb == 1:
        cells.extend(_at(p, ua, i) for i in range(la))
        return
    if la == 1:
        cells.extend(_at(p, ub, j) for j in range(lb))
        return
    if 2 * la > 3 * lb:
        _split_long(cells, p, ua, la, ub, lb)
    else:
        _split_three(cells, p, ua, la, ub, lb)


def _even_half(n: int) -> int:
    """About ``n // 2``, rounded up to even when ``n > 2``: even sub-rectangle majors keep the
    parity class of :func:`_fill` (an odd half would force a diagonal step)."""
    half = n // 2
    return half + 1 if half % 2 == 1 and n > 2 else half


def _split_long(cells: list[Vec], p: Vec, ua: Vec, la: int, ub: Vec, lb: int) -> None:
    # Much longer than wide: two side-by-side halves along the major axis, same orientation.
    half = _even_half(la)
    _fill(cells, p, ua, half, ub, lb)
    _fill(cells, _at(p, ua, half), ua, la - half, ub, lb)


def _split_three(cells: list[Vec], p: Vec, ua: Vec, la: int, ub: Vec, lb: int) -> None:
    # Hilbert's U: up the first half of the minor axis (transposed), across the full width
    # of the far part, and back down the second half (transposed and reversed).
    hb = _even_half(lb)
    ha = la // 2
    neg_a, neg_b = (-ua[0], -ua[1]), (-ub[0], -ub[1])
    _fill(cells, p, ub, hb, ua, ha)
    _fill(cells, _at(p, ub, hb), ua, la, ub, lb - hb)
    _fill(cells, _at(p, ua, la - 1, ub, hb - 1), neg_b, hb, neg_a, la - ha)


# --------------------------------------------------------------------------- visualisation


def render_grid(order: np.ndarray, grid: Grid) -> str:
    """Text table: each cell shows the step at which it is visited, right-aligned columns.

    2-D: ``H`` lines of ``W`` numbers; 1-D: one line; 3-D: one ``frame t`` block per frame.
    """
    grid = validate_grid(grid)
    steps = inverse(order).reshape(grid)
    width = len(str(max(steps.size - 1, 0)))
    if len(grid) == 3:
        return "\n\n".join(f"frame {t}\n{_table(s, width)}" for t, s in enumerate(steps))
    return _table(steps.reshape(-1, grid[-1]), width)


def _table(steps_HW: np.ndarray, width: int) -> str:
    return "\n".join(" ".join(str(s).rjust(width) for s in row) for row in steps_HW)
