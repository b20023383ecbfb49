"""Interrupt a training run from inside a test, as a scheduler's SIGTERM would."""

from __future__ import annotations

import os
import signal

import pytest

import nepa.train.trainer as trainer_mod


def sigterm_during_step(monkeypatch: pytest.MonkeyPatch, step: int) -> None:
    """Send SIGTERM to this process while optimizer step ``step`` (1-based) is in progress."""
    original = trainer_mod.Trainer._accumulate

    def accumulate(self, batches):
        out = original(self, batches)
        if self.step == step - 1:
            os.kill(os.getpid(), signal.SIGTERM)
        return out

    monkeypatch.setattr(trainer_mod.Trainer, "_accumulate", accumulate)
