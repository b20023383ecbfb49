"""What a resume may change, and how a checkpoint's config is compared with the resuming one.

A resume may change what a stop asks for (the bad-data limit, repaired shards with the same
layout, a lower lr or tighter clipping after a non-finite loss) and what has no effect on what is
learned (logging and checkpoint cadence, workers, device, the collective timeout, evaluation),
or changes it only at rounding level (which of torch's equivalent kernels runs AdamW and SDPA;
a checkpoint written before those options existed has no value for them). Anything else would
make the run a different run. Each change is recorded by the trainer.
"""

from __future__ import annotations

import json
from typing import Any

from nepa.train.checkpoint import CheckpointError

#: keys that do not change what a run learns (``nepa compare`` reuses a finished run across them)
NO_EFFECT_ON_TRAINING = {
    "train.log_every",
    "train.ckpt_every",
    "train.keep_ckpts",
    "train.num_workers",
    "train.device",
    "train.dist_timeout_s",
}
#: keys choosing between kernels that compute the same thing up to rounding
KERNEL_CHOICES = {"optim.impl", "predictor.sdpa_kernel"}
#: keys a resume may change: the above, and what a stop asks for
RESUME_MAY_DIFFER = (
    NO_EFFECT_ON_TRAINING
    | KERNEL_CHOICES
    | {
        "data.max_bad_fraction",
        "data.source",
        "optim.lr",
        "optim.clip_grad",
    }
)
RESUME_MAY_DIFFER_PREFIXES = ("eval.",)

#: ``nepa train`` exits with this code when a run stopped before its last step but can be
#: resumed (a signal, too much bad data, a non-finite loss after a checkpoint, a full disk): a
#: scheduler or script can tell it from success (0) and from a failure (1, 2)
EXIT_RESUMABLE = 75


def may_differ(key: str) -> bool:
    return key in RESUME_MAY_DIFFER or key.startswith(RESUME_MAY_DIFFER_PREFIXES)


def flatten(d: dict, prefix: str = "") -> dict[str, object]:
    """{"a": {"b": 1}} -> {"a.b": 1}."""
    out = {}
    for k, v in d.items():
        out.update(flatten(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
    return out


def resume_changes(ours: dict[str, Any], theirs: dict[str, Any], config_file: str) -> dict:
    """``{key: [checkpoint's value, ours]}`` for every key that differs between the resuming
    config and the checkpoint's (both as JSON); CheckpointError naming any key a resume may
    not change."""
    a, b = flatten(json.loads(json.dumps(theirs))), flatten(json.loads(json.dumps(ours)))
    changed = sorted(k for k in a.keys() | b.keys() if a.get(k) != b.get(k))
    refused = [k for k in changed if not may_differ(k)]
    if refused:
        raise CheckpointError(
            f"config differs from the checkpoint's at {', '.join(refused)}; a resume may "
            f"change only {', '.join(sorted(RESUME_MAY_DIFFER))} and eval.*; resume with "
            f"the same config (see {config_file}) or start a new --out"
        )
    return {k: [a.get(k), b.get(k)] for k in changed}
