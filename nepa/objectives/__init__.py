"""Objectives: own their modules, map a batch to (loss, metrics). Importing registers built-ins."""

from nepa.objectives import jepa, nepa, token  # noqa: F401  (registration)
from nepa.objectives.base import OBJECTIVES, Objective, ObjectiveConfig

__all__ = ["OBJECTIVES", "Objective", "ObjectiveConfig"]
