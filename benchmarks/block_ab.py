"""The NEPA block against variants of itself, in one process, in interleaved rounds.

    python benchmarks/block_ab.py --precision bf16            # tiny shape (192/6/3, 64 tokens)
    python benchmarks/block_ab.py --vit-s --precision fp32    # ViT-S (384/12/6, 256 tokens)
    python benchmarks/block_ab.py --profile                   # + where full's extra time goes

Models: ``matched`` and ``full`` as in ``nepa bench step``, and ``full-addcmul``: the full block
with LayerScale applied to the branch output (``torch.addcmul(x, y, gamma)``, as before it was
folded into the branch's last linear layer). Each model runs ``nepa bench step``'s training step
(forward, NEPA loss, backward, the trainer's AdamW), in its interleaved rounds after two
untimed ones. Prints each model's median step and the median over rounds of the per-round ratio
full / full-addcmul. ``--profile`` then lists the ops whose self time differs most between
matched and full (torch.profiler, mean of 3 steps after 3 more untimed ones).
"""

from __future__ import annotations

import argparse
import statistics

import torch
from torch.profiler import ProfilerActivity, profile

from nepa.bench.models import Shape, bench_inputs, build_model
from nepa.bench.step import interleaved, make_step

CPU = torch.device("cpu")


def addcmul_forward(block, x, rope, mask):
    """The block as it was before LayerScale was folded: an activation-sized addcmul."""
    x = torch.addcmul(x, block.attn(block.norm1(x), rope, mask), block.ls1.gamma)
    return torch.addcmul(x, block.mlp(block.norm2(x)), block.ls2.gamma)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--vit-s", action="store_true", help="ViT-S at batch 8 (default: tiny, 128)")
    p.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    p.add_argument("--rounds", type=int, default=12)
    p.add_argument("--profile", action="store_true")
    args = p.parse_args()
    shape, batch = (Shape(384, 12, 6, 256), 8) if args.vit_s else (Shape(192, 6, 3, 64), 128)
    emb, coords = bench_inputs(shape, batch, CPU)
    models = {name: build_model(name, shape, CPU) for name in ("matched", "full")}
    models["full-addcmul"] = build_model("full", shape, CPU)
    for blk in models["full-addcmul"].blocks:
        blk.forward = addcmul_forward.__get__(blk)
    bf16 = args.precision == "bf16"
    steps = {k: make_step(m, emb, coords, shape.grid, bf16, CPU)[0] for k, m in models.items()}

    times = interleaved(steps, args.rounds, warmup=2, device=CPU)
    base = statistics.median(times["matched"])
    for name, ts in times.items():
        med = statistics.median(ts)
        print(f"{name:13s} {med * 1e3:8.1f} ms  {100 * (med / base - 1):+6.1f}% vs matched")
    pairs = zip(times["full"], times["full-addcmul"], strict=True)
    ratio = statistics.median(a / b for a, b in pairs)
    print(f"full / full-addcmul, paired median over rounds: {ratio:.3f}")
    if args.profile:
        print_profile_diff({k: steps[k] for k in ("matched", "full")})


def print_profile_diff(steps: dict) -> None:
    self_ms: dict[str, dict[str, float]] = {}
    for name, step in steps.items():
        totals: dict[str, float] = {}
        for _ in range(3):  # after the other model's steps: settle this one's allocations
            step()
        for _ in range(3):
            with profile(activities=[ProfilerActivity.CPU]) as prof:
                step()
            for e in prof.key_averages():
                totals[e.key] = totals.get(e.key, 0.0) + e.self_cpu_time_total / 3e3
        self_ms[name] = totals
    a, b = self_ms["matched"], self_ms["full"]
    keys = sorted(set(a) | set(b), key=lambda k: -abs(b.get(k, 0.0) - a.get(k, 0.0)))
    print(f"\n{'op (self CPU ms per step)':48s} {'matched':>9s} {'full':>9s} {'diff':>8s}")
    for k in keys[:20]:
        x, y = a.get(k, 0.0), b.get(k, 0.0)
        print(f"{k[:48]:48s} {x:9.2f} {y:9.2f} {y - x:+8.2f}")
    print(f"{'total':48s} {sum(a.values()):9.2f} {sum(b.values()):9.2f}")


if __name__ == "__main__":
    main()
