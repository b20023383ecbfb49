"""The Free Spoken Digit Dataset's file naming, as a naming rule for ``nepa shards write``.

Recordings are ``{digit}_{speaker}_{index}.wav`` in one folder; the official split puts
recordings 0-4 of every (digit, speaker) in the test set and the rest in train.
"""

from __future__ import annotations

import re
from pathlib import PurePosixPath

from nepa.data.shards.naming import NAMING_RULES, Named

FSDD_NAME = re.compile(r"^(?P<label>\d+)_(?P<speaker>[A-Za-z0-9-]+)_(?P<index>\d+)$")
FSDD_TEST_INDICES = range(5)  # the official FSDD split: recordings 0-4 of each are the test set


@NAMING_RULES.register("fsdd")
def fsdd(rel: str) -> Named | None:
    """``{digit}_{speaker}_{index}.wav``: label the digit; ``.json`` gets speaker and index."""
    m = FSDD_NAME.match(PurePosixPath(rel).stem)
    if m is None:
        return None
    index = int(m["index"])
    split = "test" if index in FSDD_TEST_INDICES else "train"
    return Named(split, m["label"], {"speaker": m["speaker"], "index": index})
