"""Benchmarks: how fast a training step runs, against the machine's matmul rate and timm.

``nepa bench step`` (see :mod:`nepa.bench.step`) times forward + backward + AdamW of the
predictor and of timm's ViT blocks at the same size; ``benchmarks/README.md`` says how to read
the numbers.
"""

from nepa.bench.machine import machine_info, matmul_rate
from nepa.bench.step import StepBenchConfig, format_report, run_step_bench

__all__ = ["StepBenchConfig", "format_report", "machine_info", "matmul_rate", "run_step_bench"]
