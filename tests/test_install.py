"""The editable install from ``scripts/setup.sh`` survives the clone's own folder on sys.path.

``git clone`` names the clone ``nepa``; Python started in its parent sees that folder (which has
no ``__init__.py``) as a namespace package ``nepa``. A finder-based editable install loses to
it; the ``.pth`` path entry of ``editable_mode=compat`` makes the real package win.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

import nepa

PACKAGE_INIT = Path(nepa.__file__).resolve()


def test_import_from_the_folder_holding_the_clone(tmp_path: Path) -> None:
    (tmp_path / "nepa").mkdir()  # what the clone looks like to Python from its parent folder
    code = "import nepa, sys; print(nepa.__file__); nepa.RunConfig"
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
    assert Path(done.stdout.strip().splitlines()[-1]).resolve() == PACKAGE_INIT
    assert Path(__file__).resolve().parents[1] / "nepa" / "__init__.py" == PACKAGE_INIT


def test_torchrun_is_beside_nepa_in_the_venv() -> None:
    """The README launches with torchrun after `source .venv/bin/activate`."""
    torchrun = Path(sys.executable).parent / "torchrun"
    if not (Path(sys.executable).parent / "nepa").exists():
        pytest.skip("not running from the setup's .venv")
    proc = subprocess.run([str(torchrun), "--help"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and "nproc-per-node" in proc.stdout.replace("_", "-")
