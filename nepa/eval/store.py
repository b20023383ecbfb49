"""Frozen features extracted once per set of weights, then reused by every protocol, every
``--sweep`` cell and every ``nepa compare`` evaluation of a run.

A :class:`FeatureStore` belongs to one objective's weights; the SHA-256 of its state dict names
them. Asked for a split's features (a pooled (N, F) matrix, or a layer's tokens for the
attentive probe), it runs one pass over the split for everything planned for that split and
attention mode (:meth:`FeatureStore.plan`), and keeps the results in memory. Given a folder
(the run directory's ``features/``), it also writes the pooled matrices there as safetensors,
``<folder>/<weights hash>/<key hash>.safetensors``, with the key in the file's metadata, so a
later ``nepa eval`` or ``nepa compare`` of the same weights on the same data reads them instead.
The files are written by one background thread while extraction and the protocols go on (a
``--sweep`` of the tiny CIFAR-10 run writes 2.4 GB: 8 s when written in line); :meth:`flush`
waits for them. Token tensors stay in memory (tens of MB per thousand samples).
"""

from __future__ import annotations

import hashlib
import json
import logging
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from torch.utils.data import Dataset

from nepa.eval.features import TOKENS, Need, extract_needs
from nepa.io import atomic_path
from nepa.objectives.base import Objective

log = logging.getLogger(__name__)
FEATURES = "features"  # the run directory's folder of cached features


def weights_hash(module: torch.nn.Module) -> str:
    """SHA-256 over every state-dict entry's name, dtype, shape and bytes."""
    h = hashlib.sha256()
    for name, t in sorted(module.state_dict().items()):
        t = t.detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


class FeatureStore:
    """Features of one objective's weights on the splits of one data config (``data_key``)."""

    def __init__(
        self,
        objective: Objective,
        device: torch.device,
        *,
        data_key: str,
        bf16: bool = False,
        batch_size: int = 256,
        folder: Path | None = None,
    ) -> None:
        self.objective, self.device, self.bf16, self.batch_size = (
            objective,
            device,
            bf16,
            batch_size,
        )
        self.data_key = data_key
        self.hash = weights_hash(objective)
        self.folder = None if folder is None else Path(folder) / self.hash[:16]
        self.planned: dict[tuple[str, str], set[Need]] = {}  # (split, attn) -> needs
        self.memory: dict[tuple[str, str, Need], Any] = {}
        self.passes = 0  # extraction passes over a split (tests and logs read it)
        self._writer: ThreadPoolExecutor | None = None  # started by the first file to write
        self._writes: list[Future] = []

    @property
    def precision(self) -> str:
        """Of the extraction: bf16 (autocast) or fp32."""
        return "bf16" if self.bf16 else "fp32"

    def plan(self, attn: str, needs: list[Need]) -> None:
        """Declare what later calls will ask for, so the first pass over a split extracts it
        all."""
        for split in ("train", "test"):
            self.planned.setdefault((split, attn), set()).update(needs)

    def get(self, split: str, dataset: Dataset, attn: str, need: Need) -> Any:
        """The (N, F) matrix, or for ``tokens`` (tokens (N, T, D) float16, keep or None)."""
        key = (split, attn, need)
        if key not in self.memory and not self._load(key):
            wanted = {need} | self.planned.get((split, attn), set())
            missing = {n for n in wanted if (split, attn, n) not in self.memory}
            missing = {n for n in missing if n == need or not self._load((split, attn, n))}
            self.passes += 1
            out = extract_needs(
                self.objective,
                dataset,
                missing,
                attn=attn,
                device=self.device,
                batch_size=self.batch_size,
                bf16=self.bf16,
            )
            for n, value in out.items():
                self.memory[(split, attn, n)] = value
                self._save((split, attn, n), value)
        return self.memory[key]

    # -- disk ----------------------------------------------------------------------------------
    def _meta(self, key: tuple[str, str, Need]) -> dict[str, str]:
        split, attn, need = key
        return {
            "weights": self.hash,
            "data": self.data_key,
            "split": split,
            "attn": attn,
            "layer": str(need.layer),
            "pool": need.pool,
            "precision": self.precision,
        }

    def _file(self, key: tuple[str, str, Need]) -> Path | None:
        if self.folder is None or key[2].pool == TOKENS:
            return None
        name = hashlib.sha256(json.dumps(self._meta(key), sort_keys=True).encode()).hexdigest()
        return self.folder / f"{name[:24]}.safetensors"

    def _load(self, key: tuple[str, str, Need]) -> bool:
        file = self._file(key)
        if file is None or not file.is_file():
            return False
        try:
            with safe_open(str(file), "pt") as f:
                meta = f.metadata()
            value = load_file(str(file))["features"]
        except (SafetensorError, OSError, KeyError) as e:
            log.warning("features: %s is unreadable (%s); extracting again", file, e)
            return False
        if meta != self._meta(key):
            log.warning(
                "features: %s holds other features than its name says; extracting again", file
            )
            return False
        self.memory[key] = value
        return True

    def flush(self) -> None:
        """Wait until every features file asked for so far is written (or its failure logged)."""
        writes, self._writes = self._writes, []
        for w in writes:
            w.result()

    def _save(self, key: tuple[str, str, Need], value: Any) -> None:
        file = self._file(key)
        if file is None:
            return
        if self._writer is None:  # not a daemon: the interpreter waits for it at exit
            self._writer = ThreadPoolExecutor(1, thread_name_prefix="nepa-features")
        self._writes.append(self._writer.submit(self._write, file, key, value))

    def _write(self, file: Path, key: tuple[str, str, Need], value: Any) -> None:
        try:
            file.parent.mkdir(parents=True, exist_ok=True)
            with atomic_path(file) as tmp:
                save_file({"features": value.contiguous()}, str(tmp), metadata=self._meta(key))
        except OSError as e:  # a read-only run directory: evaluate anyway, say what is lost
            log.warning(
                "features: not cached in %s (%s); the next evaluation extracts again", file, e
            )
