"""Objective contract: owns its modules, maps a batch to (loss, metrics), and declares its whole
lifecycle here, with no-op defaults, so the trainer and evaluation call these and nothing else.

Training::

    objective.fit(samples)                   # a fresh run only: data-dependent initialisation
    objective.on_train_start(total_steps)    # once per run (and again on resume)
    per optimizer step:
    objective.on_step_start(step, seed)      # seeded per-step randomness (RoPE rescale, masks)
    objective.on_micro_batch(first)          # where the micro-batch starts in the global batch
    loss, metrics = objective(batch)         # per micro-batch; every metric is logged
    ... backward, clip, optimizer step ...
    objective.on_step_end(step)              # after the optimizer step (EMA updates)
    objective.monitor(step)                  # extra statistics to log (collapse monitor)

The optimizer is built from ``objective.param_groups(optim_cfg)``. Evaluation reads frozen
features with ``objective.features(batch, layers, attn)``, fine-tunes ``objective.backbone()``
and decays its learning rate by ``objective.layer_groups()``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import nn

from nepa.batch import Batch, FieldSpec
from nepa.objectives.backbone import Backbone, Features
from nepa.params import ParamGroup, decay_groups
from nepa.registry import Registry
from nepa.schema import ComponentConfig


class ObjectiveConfig(ComponentConfig):
    """Base of every objective config."""

    def check_fields(self, fields: dict[str, FieldSpec]) -> None:
        """Raise ValueError, saying how to fix it, if the batch lacks a field this objective
        reads itself (beyond what the encoder reads); see :func:`nepa.batch.require_field`."""

    def check_grid(self, grid: tuple[int, ...]) -> None:
        """Raise ValueError naming the grid and the numbers if this objective cannot work on
        the encoder's token grid (e.g. masks that cannot be placed on it). Called when the
        RunConfig is validated, for encoders that know their grid from the config."""


class Objective(nn.Module):
    """Subclasses implement ``forward`` and, to be evaluated, ``backbone``; every other hook
    has a default that does nothing (or the usual thing)."""

    def forward(self, batch: Batch) -> tuple[torch.Tensor, dict[str, Any]]:  # pragma: no cover
        """(scalar loss, metrics). Metrics are scalars (tensors or numbers); the trainer logs
        each one, averaged over micro-batches and ranks. ``tokens`` (tokens processed) also
        gives the logged ``tokens_per_s``."""
        raise NotImplementedError

    # -- training lifecycle ----------------------------------------------------------------------
    def fit(self, samples: Callable[[int, int], Iterator[Batch]]) -> None:
        """Data-dependent initialisation at the start of a fresh run, never on resume (what it
        fits must live in the state dict, so checkpoints carry it): ``samples(n, seed)`` yields
        batches of ``n`` training samples as evaluation sees them (a tokenizer's codebook)."""

    def on_train_start(self, total_steps: int) -> None:
        """Before the first step of a run, and again when it resumes: schedules that span the
        run (an EMA momentum ramp) learn its length here."""

    def on_micro_batch(self, first: int) -> None:
        """Before each micro-batch's forward: ``first`` is the position of its first sample in
        the step's global batch (the same on any split over ranks and accumulation), so
        per-sample randomness can be drawn per global sample."""

    def on_step_start(self, step: int, seed: int) -> None:
        """Before the step's first micro-batch. ``seed`` is a pure function of (run seed, step),
        so randomness drawn from it is the same on every rank, micro-batch split and resume."""

    def on_step_end(self, step: int) -> None:
        """Right after the optimizer step (``step`` counts steps done, from 1): EMA updates."""

    def monitor(self, step: int) -> dict[str, float]:
        """Extra statistics to log after step ``step`` (e.g. every N steps); {} for none."""
        return {}

    def no_weight_decay(self) -> set[str]:
        """Full names of parameters (besides norms and biases) that get no weight decay."""
        return set()

    def param_groups(self, optim_cfg: Any) -> list[ParamGroup]:
        """AdamW parameter groups: weight decay off for norms, biases and
        :meth:`no_weight_decay`; each group may carry an ``lr_scale`` that the schedule
        multiplies in. Parameters that do not require grad (e.g. an EMA copy) are left out."""
        return decay_groups(self, optim_cfg.weight_decay, self.no_weight_decay())

    # -- evaluation ----------------------------------------------------------------------------
    def backbone(self) -> Backbone:
        """The network evaluation reads and fine-tuning trains (sharing this objective's
        modules). Objectives without one cannot be evaluated."""
        raise NotImplementedError(
            f"objective {type(self).__name__} declares no backbone(): it cannot be evaluated"
        )

    @torch.no_grad()
    def features(self, batch: Batch, layers: list[int], attn: str | None = None) -> Features:
        """Frozen features: the backbone's outputs after each block in ``layers`` (1-based),
        under attention mode ``attn`` (None: the backbone's own training mode)."""
        return self.backbone()(batch, layers=layers, attn=attn)

    def layer_groups(self) -> list[list[tuple[str, nn.Parameter]]]:
        """The backbone's parameters from input to output, for layer-wise lr decay."""
        return self.backbone().layer_groups()


#: builder signature: ``fn(cfg, *, encoder, predictor) -> Objective``
OBJECTIVES: Registry[Any] = Registry("objective")
