"""nepa: self-supervised pretraining by next-embedding prediction, on any modality.

Importing the package registers the built-in encoders, scan orders, objectives and datasets.
"""

__version__ = "0.2.0"

from nepa import data, encoders, objectives  # noqa: E402,F401  (registration by import)
from nepa.config import RunConfig, apply_overrides, load_recipe  # noqa: E402
from nepa.registry import Registry  # noqa: E402


def load_run(run_dir, *, random_init: bool = False, device: str = "cpu"):
    """A run directory, ready to embed data: see :mod:`nepa.api`."""
    from nepa.api import load_run as _load_run

    return _load_run(run_dir, random_init=random_init, device=device)


__all__ = ["Registry", "RunConfig", "apply_overrides", "load_recipe", "load_run", "__version__"]
