"""The one AdamW parameter-group builder: pretraining, fine-tuning and probes all use it."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from torch import nn

ParamGroup = dict[str, Any]


def decay_groups(
    params: nn.Module | Iterable[tuple[str, nn.Parameter]],
    weight_decay: float,
    no_decay: Iterable[str] = (),
    *,
    lr_scale: Callable[[str], float] | None = None,
) -> list[ParamGroup]:
    """AdamW groups of the trainable parameters of ``params`` (a module or (name, parameter)
    pairs): weight decay ``weight_decay``, except 0 for norms and biases (ndim < 2) and the
    names in ``no_decay``. ``lr_scale(name)`` (default 1.0) splits them further; each group
    holds ``params``, ``names``, ``weight_decay`` and ``lr_scale``, in order of first appearance
    with decayed parameters first."""
    named = params.named_parameters() if isinstance(params, nn.Module) else params
    skip = set(no_decay)
    groups: dict[tuple[bool, float], ParamGroup] = {}
    for name, p in named:
        if not p.requires_grad:
            continue
        decay = p.ndim >= 2 and name not in skip
        scale = 1.0 if lr_scale is None else float(lr_scale(name))
        group = groups.setdefault(
            (decay, scale),
            {
                "params": [],
                "names": [],
                "weight_decay": weight_decay if decay else 0.0,
                "lr_scale": scale,
            },
        )
        group["params"].append(p)
        group["names"].append(name)
    return sorted(groups.values(), key=lambda g: g["weight_decay"] == 0.0)
