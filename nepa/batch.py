"""Samples and batches are dicts of tensors, and data configs declare their fields.

A sample is ``{"image": (C, H, W) float32, "label": () int64}``; a batch stacks samples along a
new first axis (``{"image": (B, C, H, W), "label": (B,)}``). Later modalities add their own
fields (``{"audio": ..., "length": ...}``, ``{"image": ..., "query": ..., "answer": ...}``). An
encoder reads the fields it names; labels are an ordinary field that only evaluation reads.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch

Batch = dict[str, torch.Tensor]

_DTYPES = {
    "float32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
    "int64": torch.int64,
    "int32": torch.int32,
    "uint8": torch.uint8,
    "bool": torch.bool,
}


@dataclass(frozen=True)
class FieldSpec:
    """One field of a sample: its shape (``None`` for an axis whose length varies between
    samples, which the dataset pads to a fixed length or reports with a ``length`` field) and
    dtype name (``float32``, ``int64``, ``uint8``, ``bool``...)."""

    shape: tuple[int | None, ...]
    dtype: str = "float32"

    def __post_init__(self) -> None:
        if self.dtype not in _DTYPES:
            raise ValueError(f"unknown dtype {self.dtype!r}; known: {', '.join(_DTYPES)}")

    @property
    def torch_dtype(self) -> torch.dtype:
        return _DTYPES[self.dtype]

    def placeholder(self, n: int) -> torch.Tensor:
        """``n`` zero samples of this field (variable axes get length 1): (n, *shape)."""
        return torch.zeros(n, *(s or 1 for s in self.shape), dtype=self.torch_dtype)

    def __str__(self) -> str:
        dims = ", ".join("*" if s is None else str(s) for s in self.shape)
        return f"({dims}) {self.dtype}"


Fields = Mapping[str, FieldSpec]

#: the field evaluation reads class labels from
LABEL = "label"
LABEL_FIELD = FieldSpec((), "int64")


def to_device(batch: Mapping[str, torch.Tensor], device: torch.device, non_blocking: bool = False):
    """Every tensor of ``batch`` on ``device`` (a new dict; non-tensor values are kept)."""
    return {
        k: v.to(device, non_blocking=non_blocking) if isinstance(v, torch.Tensor) else v
        for k, v in batch.items()
    }


def batch_size(batch: Mapping[str, torch.Tensor]) -> int:
    """The number of samples in ``batch``: the common first dimension of its tensors."""
    sizes = {k: v.shape[0] for k, v in batch.items() if isinstance(v, torch.Tensor) and v.ndim}
    if not sizes:
        raise ValueError("a batch needs at least one tensor field with a batch dimension")
    if len(set(sizes.values())) > 1:
        raise ValueError(f"batch fields disagree on the batch size: {sizes}")
    return next(iter(sizes.values()))


def collate(samples: list[Mapping[str, torch.Tensor]]) -> Batch:
    """Stack samples field by field: [{"image": (C,H,W)}, ...] -> {"image": (B,C,H,W)}."""
    keys = samples[0].keys()
    return {k: torch.stack([torch.as_tensor(s[k]) for s in samples]) for k in keys}


def placeholder_batch(fields: Fields, n: int) -> Batch:
    """A batch of ``n`` zero samples of every declared field (a failed loader's stand-in)."""
    return {name: spec.placeholder(n) for name, spec in fields.items()}


def describe_fields(fields: Fields) -> str:
    return ", ".join(f"{k} {v}" for k, v in fields.items()) or "(none)"


def require_field(
    fields: Fields, name: str, *, ndim: int | None = None, reader: str = "the encoder"
) -> FieldSpec:
    """The spec of field ``name``, or ValueError naming the field, the reader and what exists."""
    if name not in fields:
        raise ValueError(
            f"{reader} reads field {name!r}, which the data does not declare; the data's fields: "
            f"{describe_fields(fields)}"
        )
    spec = fields[name]
    if ndim is not None and len(spec.shape) != ndim:
        raise ValueError(
            f"{reader} needs field {name!r} with {ndim} dimension(s) per sample, the data "
            f"declares {spec}"
        )
    return spec
