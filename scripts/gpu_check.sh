#!/usr/bin/env bash
# Issue 14's GPU check: one script, a few minutes on one GPU, never part of the tests.
#   1. xformers against SDPA: agreement (outputs and gradients) and speed, at ViT-B and ViT-S
#      (`nepa bench step` on CUDA adds the full-xformers variant and the agreement check)
#   2. the bf16 step at ViT-B, 256 tokens: FLOP/s as a share of the measured bf16 matmul rate
#      (target at least 50%)
#   3. one step's peak memory and time against sequence length, 1k to 16k tokens
# Usage: bash scripts/gpu_check.sh [OUT_DIR]   (default results/gpu; PYTHON picks the interpreter)
set -euo pipefail
out=${1:-results/gpu}
mkdir -p "$out"
py=${PYTHON:-python}
"$py" -m nepa.cli bench step --device cuda --dim 768 --depth 12 --heads 12 --tokens 256 \
  --batch 64 --precision bf16,fp32 --json "$out/step_vit_b.json" | tee "$out/step_vit_b.txt"
"$py" -m nepa.cli bench step --device cuda --dim 384 --depth 12 --heads 6 --tokens 256 \
  --batch 64 --precision bf16 --json "$out/step_vit_s.json" | tee "$out/step_vit_s.txt"
"$py" -m nepa.cli bench memory --device cuda --dim 768 --depth 12 --heads 12 \
  --lengths 1024,2048,4096,8192,16384 --batch 1 --precision bf16 \
  --json "$out/memory.json" | tee "$out/memory.txt"
