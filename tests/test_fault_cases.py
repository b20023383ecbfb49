"""Smaller fault cases of issue 11 (points 4 and 7), each through the CLI as a user meets it."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import numpy as np
import pytest
import torch
from torchvision.io import encode_png

from nepa.cli import main


def test_viz_takes_an_animated_colour_gif_for_a_grey_run(tiny_run: Path, tmp_path: Path) -> None:
    from PIL import Image

    rng = np.random.default_rng(0)
    frames = [Image.fromarray(rng.integers(0, 256, (20, 20, 3), dtype=np.uint8)) for _ in range(3)]
    gif = tmp_path / "anim.gif"
    frames[0].save(gif, save_all=True, append_images=frames[1:])
    png = tmp_path / "att.png"
    assert main(["viz", "attention", str(tiny_run), str(gif), "--png", str(png)]) == 0
    assert png.stat().st_size > 0


def test_scans_show_bounds_the_grid(capsys) -> None:
    assert main(["scans", "show", "--grid", "100000x100000", "--order", "hilbert"]) == 2
    assert "at most 1,000,000" in capsys.readouterr().err


def test_help_is_a_user_summary(capsys) -> None:
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    assert "next-embedding prediction" in out and "register(subparsers)" not in out


def test_every_run_file_is_readable_by_others(tiny_run: Path) -> None:
    mask = os.umask(0)
    os.umask(mask)
    if mask & 0o044:
        pytest.skip(f"this umask ({mask:03o}) hides files from others")
    for p in [tiny_run / "model.safetensors", tiny_run / "config.json", tiny_run / "meta.json"]:
        assert stat.S_IMODE(p.stat().st_mode) & 0o044 == 0o044, p.name


def test_the_grey_png_path_still_works(tiny_run: Path, tmp_path: Path) -> None:
    png = tmp_path / "digit.png"
    png.write_bytes(encode_png(torch.zeros(1, 28, 28, dtype=torch.uint8)).numpy().tobytes())
    assert (
        main(["viz", "similarity", str(tiny_run), str(png), "--png", str(tmp_path / "s.png")]) == 0
    )
