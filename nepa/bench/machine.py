"""What a benchmark ran on, and how fast this machine multiplies square matrices.

The matmul rate is the reference for "achieved FLOP/s as a fraction of what this machine can
do": a training step cannot beat the rate of its own largest kernels by much.
"""

from __future__ import annotations

import importlib.metadata
import os
import platform
import statistics
import time
from collections.abc import Callable

import torch

from nepa.train.build import native_cpu_bf16

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
SQUARE = {"cpu": 2048, "cuda": 8192}  # square matmul size per device type
SECONDS_PER_MATMUL = 2.0  # CPU without native bf16: shrink the square until one fits this


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def machine_info(device: torch.device) -> dict:
    """Versions, threads and device names, for the JSON record of a run."""
    info = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "torch": torch.__version__,
        "timm": _version("timm"),
        "xformers": _version("xformers"),
        "cpu_model": cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "cpu_native_bf16": native_cpu_bf16(),
        "device": device.type,
        "device_name": cpu_model(),
        "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
    }
    if device.type == "cuda":
        info["device_name"] = torch.cuda.get_device_name(device)
        info["cuda"] = torch.version.cuda
    return info


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], object], device: torch.device) -> float:
    """Wall seconds of one call, with the device drained before and after."""
    sync(device)
    t0 = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - t0


def _square_seconds(n: int, dtype: torch.dtype, device: torch.device, repeats: int) -> list[float]:
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    timed(lambda: a @ b, device)  # warm-up: kernel selection, page faults
    return [timed(lambda: a @ b, device) for _ in range(repeats)]


def _fit_size(target: int, dtype: torch.dtype, device: torch.device) -> int:
    """Largest power-of-two square <= target whose matmul takes about SECONDS_PER_MATMUL at
    most, judged from a 256 probe. Only needed on CPUs without native bf16 (0.3-7 GFLOP/s)."""
    probe = statistics.median(_square_seconds(256, dtype, device, 2))
    n = target
    while n > 256 and probe * (n / 256) ** 3 > SECONDS_PER_MATMUL:
        n //= 2
    return n


def matmul_rate(
    precision: str, device: torch.device, size: int | None = None, repeats: int = 5
) -> dict:
    """Median FLOP/s of ``size x size`` matmuls in ``precision`` (2048 on CPU, 8192 on GPU).

    Returns ``{"precision", "size", "flop_per_s", "seconds"}``. On a CPU without native bf16
    and no explicit size, bf16 uses the largest square that runs in ~2 s (see ``size``)."""
    dtype = DTYPES[precision]
    if size is None:
        size = SQUARE.get(device.type, 2048)
        if device.type == "cpu" and dtype == torch.bfloat16 and not native_cpu_bf16():
            size = _fit_size(size, dtype, device)
    seconds = _square_seconds(size, dtype, device, repeats)
    return {
        "precision": precision,
        "size": size,
        "flop_per_s": 2 * size**3 / statistics.median(seconds),
        "seconds": seconds,
    }
