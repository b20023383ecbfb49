"""Scan orders: permutations, inverses, locality guarantees, known small orders, and the CLI.

Tests parametrised over ``SCANS.names()`` cover any newly registered scan automatically.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nepa.cli import main
from nepa.encoders.scans import (
    SCANS,
    inverse,
    render_grid,
    scan_coords,
    scan_order,
)
from nepa.registry import RegistryError
from nepa.viz.scans import draw_path_png

ALL = SCANS.names()
NEIGHBOUR_SCANS = ["snake", "spiral", "hilbert"]  # every step between 4-neighbours (2-D)
THREE_D = ["raster", "snake", "hilbert", "random"]  # built-ins that accept (T, H, W)
FAST = settings(max_examples=25, deadline=None)

sizes = st.integers(1, 24)
grids_2d = st.tuples(sizes, sizes)
grids_3d = st.tuples(st.integers(1, 5), st.integers(1, 7), st.integers(1, 7))


def step_lengths(order: np.ndarray, grid: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """Manhattan and Chebyshev length of every step ``(T-1,)``."""
    coords = np.stack(np.unravel_index(order, grid), axis=-1)  # (T, A)
    d = np.abs(np.diff(coords, axis=0))
    return d.sum(axis=1), d.max(axis=1, initial=0)


def n_diagonal_steps(order: np.ndarray, grid: tuple[int, ...]) -> int:
    """Diagonal steps in a path; fails if any step is longer than one diagonal."""
    manhattan, chebyshev = step_lengths(order, grid)
    assert (chebyshev <= 1).all(), "a step jumps further than a diagonal neighbour"
    assert (manhattan >= 1).all()
    return int((manhattan > 1).sum())


def assert_permutation(order: np.ndarray, n: int) -> None:
    assert order.dtype == np.int64 and order.shape == (n,)
    np.testing.assert_array_equal(np.sort(order), np.arange(n))


# --------------------------------------------------------------------------- every entry


@pytest.mark.parametrize("name", ALL)
@FAST
@given(grid=grids_2d, seed=st.integers(0, 2**32 - 1))
def test_2d_permutation_inverse_and_coords(name: str, grid: tuple[int, int], seed: int) -> None:
    order = scan_order(name, grid, seed)
    n = grid[0] * grid[1]
    assert_permutation(order, n)
    inv = inverse(order)
    np.testing.assert_array_equal(order[inv], np.arange(n))
    np.testing.assert_array_equal(inv[order], np.arange(n))
    x = np.arange(n) * 10  # tokens in row-major order: scan, then unscan
    np.testing.assert_array_equal(x[order][inv], x)
    coords = scan_coords(name, grid, seed)
    assert coords.shape == (n, 2)
    np.testing.assert_array_equal(np.ravel_multi_index(tuple(coords.T), grid), order)


@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize("n", [1, 2, 7, 16])
def test_1d(name: str, n: int) -> None:
    order = scan_order(name, (n,), seed=3)
    assert_permutation(order, n)
    if name == "random":
        np.testing.assert_array_equal(order, np.random.default_rng(3).permutation(n))
    elif name in ("raster", "snake", "hilbert", "column", "spiral", "zigzag"):
        np.testing.assert_array_equal(order, np.arange(n))


@pytest.mark.parametrize("name", ALL)
@FAST
@given(grid=grids_3d)
def test_3d_permutation_and_time_major(name: str, grid: tuple[int, int, int]) -> None:
    try:
        order = scan_order(name, grid)
    except ValueError as e:
        assert name not in THREE_D
        assert "3-D" in str(e) and "hilbert" in str(e)  # says which scans do support 3-D
        return
    t, h, w = grid
    assert_permutation(order, t * h * w)
    if name != "random":
        frame = order // (h * w)
        np.testing.assert_array_equal(frame, np.repeat(np.arange(t), h * w))


@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize("grid", [(), (2, 2, 2, 2), (0, 3), (3, -1), (2.0, 3), (True, 2)])
def test_bad_grid_raises(name: str, grid: tuple) -> None:
    with pytest.raises(ValueError, match="axes|positive"):
        scan_order(name, grid)


@pytest.mark.parametrize("name", ALL)
def test_entry_rejects_unsupported_axes(name: str) -> None:
    with pytest.raises(ValueError, match="supports"):
        SCANS.get(name)((2, 2, 2, 2))


def test_unknown_name_lists_known() -> None:
    with pytest.raises(RegistryError, match="known: .*hilbert"):
        scan_order("peano", (4, 4))


def test_scan_order_rejects_non_permutation(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(SCANS._items, "broken", lambda grid, seed=0: np.zeros(4, np.int64))
    with pytest.raises(ValueError, match="permutation"):
        scan_order("broken", (2, 2))


# --------------------------------------------------------------------------- locality


@pytest.mark.parametrize("name", NEIGHBOUR_SCANS)
@FAST
@given(grid=grids_2d)
def test_2d_steps_are_4_neighbours(name: str, grid: tuple[int, int]) -> None:
    assert n_diagonal_steps(scan_order(name, grid), grid) == 0


def test_hilbert_never_steps_diagonally_on_any_grid_up_to_24() -> None:
    """Guarantee of the construction (see ``_hilbert_2d``): on every H x W grid the path goes
    from (0, 0) to the corner (0, W-1) or (H-1, 0) through 4-neighbours only, no diagonal
    step, including odd x even grids where gilbert itself takes one. Exhaustive, 576 grids."""
    for h in range(1, 25):
        for w in range(1, 25):
            order = scan_order("hilbert", (h, w))
            assert n_diagonal_steps(order, (h, w)) == 0, (h, w)
            assert order[0] == 0 and order[-1] in (w - 1, (h - 1) * w), (h, w)


@pytest.mark.parametrize("n", [1, 2, 4, 8, 16, 32, 64])
def test_hilbert_powers_of_two_squares(n: int) -> None:
    order = scan_order("hilbert", (n, n))
    assert n_diagonal_steps(order, (n, n)) == 0
    np.testing.assert_array_equal(order, classic_hilbert(n))


@pytest.mark.parametrize("name", ["snake", "hilbert"])
@FAST
@given(grid=grids_3d)
def test_3d_steps_are_6_neighbours(name: str, grid: tuple[int, int, int]) -> None:
    # hilbert frames have no diagonal step (see above), so the 3-D path has none either
    manhattan, _ = step_lengths(scan_order(name, grid), grid)
    assert (manhattan == 1).all()


# --------------------------------------------------------------------------- known orders


def classic_hilbert(n: int) -> np.ndarray:
    """Textbook Hilbert curve (d -> (x, y) by quadrant rotation) on an n x n grid, n = 2^k,
    mapped to row-major indices with x the column: starts at (0, 0), ends at (0, n-1)."""
    out = []
    for d in range(n * n):
        x = y = 0
        s, t = 1, d
        while s < n:
            rx, ry = 1 & (t // 2), 1 & (t ^ (1 & (t // 2)))
            if ry == 0:
                if rx == 1:
                    x, y = s - 1 - x, s - 1 - y
                x, y = y, x
            x, y, t, s = x + s * rx, y + s * ry, t // 4, s * 2
        out.append(y * n + x)
    return np.array(out)


@pytest.mark.parametrize(
    ("name", "grid", "expected"),
    [
        ("raster", (2, 3), [0, 1, 2, 3, 4, 5]),
        ("column", (2, 3), [0, 3, 1, 4, 2, 5]),
        ("column", (3, 1), [0, 1, 2]),
        ("snake", (3, 3), [0, 1, 2, 5, 4, 3, 6, 7, 8]),
        ("zigzag", (3, 3), [0, 1, 3, 6, 4, 2, 5, 7, 8]),
        ("zigzag", (2, 4), [0, 1, 4, 5, 2, 3, 6, 7]),
        ("zigzag", (3, 2), [0, 1, 2, 4, 3, 5]),
        ("spiral", (3, 4), [0, 1, 2, 3, 7, 11, 10, 9, 8, 4, 5, 6]),
        ("spiral", (4, 4), [0, 1, 2, 3, 7, 11, 15, 14, 13, 12, 8, 4, 5, 6, 10, 9]),
        ("spiral", (4, 1), [0, 1, 2, 3]),
        ("hilbert", (1, 1), [0]),
        ("hilbert", (2, 2), [0, 2, 3, 1]),
        ("hilbert", (4, 4), [0, 1, 5, 4, 8, 12, 13, 9, 10, 14, 15, 11, 7, 6, 2, 3]),
        # odd major, even minor: the even side (rows) becomes major -> no diagonal step
        ("hilbert", (2, 3), [0, 1, 2, 5, 4, 3]),
        ("snake", (2, 2, 2), [0, 1, 3, 2, 6, 7, 5, 4]),
        ("hilbert", (2, 2, 2), [0, 2, 3, 1, 5, 7, 6, 4]),
    ],
)
def test_known_orders(name: str, grid: tuple[int, ...], expected: list[int]) -> None:
    np.testing.assert_array_equal(scan_order(name, grid), expected)


def test_zigzag_matches_jpeg_table() -> None:
    jpeg = [
        0, 1, 8, 16, 9, 2, 3, 10, 17, 24, 32, 25, 18, 11, 4, 5,
        12, 19, 26, 33, 40, 48, 41, 34, 27, 20, 13, 6, 7, 14, 21, 28,
        35, 42, 49, 56, 57, 50, 43, 36, 29, 22, 15, 23, 30, 37, 44, 51,
        58, 59, 52, 45, 38, 31, 39, 46, 53, 60, 61, 54, 47, 55, 62, 63,
    ]  # fmt: skip
    np.testing.assert_array_equal(scan_order("zigzag", (8, 8)), jpeg)


def test_random_is_seeded() -> None:
    a, b = scan_order("random", (8, 8), seed=1), scan_order("random", (8, 8), seed=1)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, scan_order("random", (8, 8), seed=2))


def test_render_grid() -> None:
    assert render_grid(scan_order("raster", (2, 3)), (2, 3)) == "0 1 2\n3 4 5"
    assert render_grid(scan_order("column", (2, 6)), (2, 6)) == (
        " 0  2  4  6  8 10\n 1  3  5  7  9 11"
    )
    assert render_grid(scan_order("snake", (2, 1, 2)), (2, 1, 2)) == "frame 0\n0 1\n\nframe 1\n3 2"


def test_draw_path_png(tmp_path) -> None:
    for grid in [(5, 7), (1, 1), (2, 3, 3)]:
        path = tmp_path / f"{len(grid)}.png"
        draw_path_png(scan_order("hilbert", grid), grid, path, title="t")
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# --------------------------------------------------------------------------- CLI


def test_cli_json_equals_scan_order(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["scans", "show", "--grid", "6x5", "--order", "hilbert", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out == {"order": scan_order("hilbert", (6, 5)).tolist(), "grid": [6, 5]}


def test_cli_json_3d_and_seed(capsys: pytest.CaptureFixture[str]) -> None:
    assert (
        main(["scans", "show", "--grid", "2x3x4", "--order", "random", "--seed", "5", "--json"])
        == 0
    )
    out = json.loads(capsys.readouterr().out)
    assert out["order"] == scan_order("random", (2, 3, 4), seed=5).tolist()


def test_cli_text(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["scans", "show", "--grid", "2x3", "--order", "raster"]) == 0
    assert capsys.readouterr().out == "0 1 2\n3 4 5\n"


def test_cli_list(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["scans", "list"]) == 0
    # Read the registry now: a user file imported by another test may have added an order.
    listed = capsys.readouterr().out.split()
    assert listed == SCANS.names() and set(ALL) <= set(listed)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--grid", "4x4", "--order", "peano"], "known: {registry}"),
        (["--grid", "4y4"], "bad --grid"),
        (["--grid", "0x4"], "bad --grid"),
        (["--grid", "2x2x2", "--order", "spiral"], "3-D"),
    ],
)
def test_cli_errors_exit_2(argv: list[str], message: str, capsys) -> None:
    assert main(["scans", "show", *argv]) == 2
    message = message.format(registry=", ".join(SCANS.names()))  # as registered right now
    captured = capsys.readouterr()
    assert message in captured.err and "Traceback" not in captured.err
    assert captured.out == ""


def test_cli_png(tmp_path, capsys: pytest.CaptureFixture[str]) -> None:
    png = tmp_path / "scan.png"
    assert main(["scans", "show", "--grid", "8x8", "--order", "hilbert", "--png", str(png)]) == 0
    assert png.stat().st_size > 0 and png.read_bytes()[:4] == b"\x89PNG"
    assert capsys.readouterr().out.startswith(" 0 ")  # text grid still printed


def test_scans_figure_has_a_panel_per_order() -> None:
    from nepa.viz.figures import scans_figure

    for grid in [(8, 8), (3, 5), (6,)]:
        fig = scans_figure(grid)
        # Read the registry now: a user file imported by another test may have added an order.
        assert [ax.get_title() for ax in fig.axes] == SCANS.names()
        for ax in fig.axes:  # one path, start and end per panel
            assert len(ax.lines) == 3


def test_cli_png_all_orders(tmp_path, capsys: pytest.CaptureFixture[str]) -> None:
    from torchvision.io import decode_png, read_file

    png = tmp_path / "scans.png"
    assert main(["scans", "show", "--grid", "8x8", "--order", "all", "--png", str(png)]) == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    img = decode_png(read_file(str(png)))
    assert img.shape[0] in (3, 4) and img.shape[1] > 300 and img.shape[2] > 600
    out = capsys.readouterr().out
    assert all(f"{name}\n" in out for name in SCANS.names())  # a text table per order


def test_cli_all_orders_json(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["scans", "show", "--grid", "3x4", "--order", "all", "--seed", "2", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["grid"] == [3, 4]
    assert out["orders"] == {n: scan_order(n, (3, 4), seed=2).tolist() for n in SCANS.names()}


def test_cli_all_orders_refuses_3d(tmp_path, capsys: pytest.CaptureFixture[str]) -> None:
    png = tmp_path / "scans.png"
    assert main(["scans", "show", "--grid", "2x4x4", "--order", "all", "--png", str(png)]) == 2
    captured = capsys.readouterr()
    assert "1-D or 2-D grids" in captured.err and "Traceback" not in captured.err
    assert not png.exists() and captured.out == ""
