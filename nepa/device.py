"""The one device picker: ``auto`` (CUDA when visible, else CPU), ``cpu`` or ``cuda[:N]``."""

from __future__ import annotations

import torch


def pick_device(requested: str = "auto", local_rank: int | None = None) -> torch.device:
    """The device for ``requested``; ``local_rank`` (a torchrun process) picks and sets its GPU.
    An explicit ``cuda`` without a visible GPU raises ValueError saying what to use instead."""
    kind = requested.split(":")[0]
    if kind not in ("auto", "cpu", "cuda"):
        raise ValueError(f"unknown device {requested!r}; valid: auto, cpu, cuda, cuda:N")
    if kind == "cpu" or (kind == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise ValueError(
            f"device {requested!r} was requested but no CUDA device is visible; use 'cpu' or 'auto'"
        )
    device = torch.device(requested) if ":" in requested else torch.device("cuda", local_rank or 0)
    if local_rank is not None:
        torch.cuda.set_device(device)
    return device
