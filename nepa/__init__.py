"""nepa: self-supervised pretraining by next-embedding prediction, on any modality.

Importing the package registers the built-in encoders, scan orders, objectives and datasets.
"""

__version__ = "0.1.0"

from nepa import data, encoders, objectives  # noqa: E402,F401  (registration by import)
from nepa.config import RunConfig, apply_overrides, load_recipe  # noqa: E402
from nepa.registry import Registry  # noqa: E402

__all__ = ["Registry", "RunConfig", "apply_overrides", "load_recipe", "__version__"]
