"""train.precision: ``auto`` is bf16 autocast on CUDA and fp32 on every CPU; explicit wins."""

from __future__ import annotations

import logging

import pytest
import torch

from nepa.bench.machine import machine_info
from nepa.train.build import native_cpu_bf16, resolve_precision

CPU, CUDA = torch.device("cpu"), torch.device("cuda")


@pytest.fixture(params=[True, False], ids=["native-bf16-cpu", "no-bf16-cpu"])
def cpu_bf16(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> bool:
    """Pretend the CPU has (or lacks) native bf16 matmul, whatever this machine has."""
    monkeypatch.setattr(torch.backends.mkldnn, "is_available", lambda: True)
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: request.param)
    assert native_cpu_bf16() is request.param
    return request.param


def test_auto_is_fp32_on_every_cpu(cpu_bf16: bool) -> None:
    bf16, reason = resolve_precision("auto", CPU)
    assert bf16 is False
    assert reason.startswith("auto: fp32 on")
    # where bf16 would pay, the reason says how to get it; where it is emulated, why not
    assert ("train.precision=bf16" in reason) is cpu_bf16


def test_auto_is_bf16_on_cuda(cpu_bf16: bool) -> None:
    assert resolve_precision("auto", CUDA) == (True, "auto: CUDA")


def test_explicit_requests_are_honoured(cpu_bf16: bool, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="nepa.train.build"):
        assert resolve_precision("fp32", CPU) == (False, "requested")
        assert resolve_precision("fp32", CUDA) == (False, "requested")
        assert resolve_precision("bf16", CPU) == (True, "requested")
        assert resolve_precision("bf16", CUDA) == (True, "requested")
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    # bf16 forced on a CPU without native bf16 says it will be slow; with native bf16, silence
    assert len(warned) == (0 if cpu_bf16 else 1)
    assert all("much slower than fp32" in w for w in warned)


def test_bench_reports_the_cpu_probe_not_the_auto_choice(cpu_bf16: bool) -> None:
    assert machine_info(CPU)["cpu_native_bf16"] is cpu_bf16
