"""Naming rules: file names that carry a sample's split and label, for a dataset whose files
all sit in one folder (instead of ``<split>/<class>/<file>``).

A rule maps a file's relative path to :class:`Named` (its split, label and extra metadata for
the sample's ``.json``), or None when the name does not follow the rule. The audio source of
``nepa shards write`` uses a rule when it names every file of a one-folder source. A user's
module registers its own::

    @NAMING_RULES.register("my_corpus")
    def my_corpus(rel: str) -> Named | None: ...
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from nepa.registry import Registry


@dataclass(frozen=True)
class Named:
    split: str
    label: str
    meta: dict[str, Any] = field(default_factory=dict)  # goes into the sample's .json


NamingRule = Callable[[str], Named | None]

NAMING_RULES: Registry[NamingRule] = Registry("naming rule")
