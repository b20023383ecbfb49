"""``nepa bench``: benchmarks of this machine and of the predictor.

nepa bench step [--dim 384 --depth 12 --heads 6 --tokens 256 --batch B
                 --precision fp32,bf16 --steps N --warmup W --device auto|cpu|cuda
                 --threads N --json FILE]
nepa bench loader [--archive CIFAR_TAR_GZ --work DIR --workers 0,1,2 --batch 128
                   --batches 40 --rounds 3 --json FILE]
nepa bench train RECIPE [--steps 20 --warmup 5 --rounds 3 --set KEY=VALUE --json FILE]
nepa bench optim RECIPE [--rounds 20 --json FILE]
nepa bench extract RECIPE [--images 2048 --batch 256,1024 --rounds 3 --json FILE]
nepa bench memory [--dim 768 --depth 12 --heads 12 --lengths 1024,...,16384 --batch 1
                   --precision bf16 --variants full,full-xformers --device auto --json FILE]
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from nepa.cli import add_overrides, usage

if TYPE_CHECKING:
    from nepa.config import RunConfig


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``bench`` with its ``step`` subcommand."""
    parser = subparsers.add_parser(
        "bench", help="time a training step against timm and the machine"
    )
    sub = parser.add_subparsers(dest="bench_command")
    parser.set_defaults(func=lambda args: usage(parser))

    step = sub.add_parser(
        "step",
        help="time forward+backward+AdamW of the predictor (matched, full) and timm's ViT blocks",
        description="Per precision: the square-matmul rate of this machine, then a training step of "
        "timm's ViT blocks, the predictor shaped like them ('matched') and the NEPA block ('full'), "
        "timed in interleaved rounds. Defaults keep a 2-core CPU run under ~3 minutes.",
    )
    step.add_argument("--dim", type=int, default=384)
    step.add_argument("--depth", type=int, default=12)
    step.add_argument("--heads", type=int, default=6)
    step.add_argument("--tokens", type=int, default=256, help="T input tokens (plus 1 start token)")
    step.add_argument(
        "--batch", type=int, help="default: 8 on CPU (1 for bf16 without native bf16), 64 on CUDA"
    )
    step.add_argument(
        "--precision", default="fp32,bf16", help="comma-separated: fp32, bf16 (autocast)"
    )
    step.add_argument(
        "--steps", type=int, help="timed steps per model (default: 4 CPU, 2 CPU-bf16, 20 CUDA)"
    )
    step.add_argument(
        "--warmup", type=int, help="untimed steps per model first (default: 1 CPU, 5 CUDA)"
    )
    step.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    step.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    step.add_argument(
        "--matmul-size", type=int, help="square matmul size (default: 2048 CPU, 8192 CUDA)"
    )
    step.add_argument(
        "--variants",
        help="comma-separated models (default: timm,matched,full, plus full-xformers on CUDA "
        "with xformers); matched-torch and full-torch leave SDPA's kernel to torch",
    )
    step.add_argument(
        "--profile",
        type=int,
        default=0,
        metavar="ROWS",
        help="also profile one step of each model (torch.profiler) and print its top ROWS ops",
    )
    step.add_argument(
        "--json", type=Path, metavar="FILE", help="also write every figure and machine info here"
    )
    step.set_defaults(func=_step)

    loader = sub.add_parser(
        "loader",
        help="CIFAR-10 batches/s from shards vs torchvision ImageFolder, and vs the demo model",
        description="Extracts the CIFAR-10 archive and writes its shards once (under --work), "
        "then times both loaders (decode + the recipe's augmentation) per worker count, in "
        "alternating rounds, and the demo model's training step.",
    )
    loader.add_argument("--archive", default="${NEPA_DATA_DIR}/cifar10-png.tar.gz")
    loader.add_argument("--work", default="~/.cache/nepa/bench/cifar10")
    loader.add_argument("--workers", default="0,1,2", help="comma-separated worker counts")
    loader.add_argument("--batch", type=int, default=128)
    loader.add_argument("--batches", type=int, default=40, help="timed batches per measurement")
    loader.add_argument("--rounds", type=int, default=3)
    loader.add_argument("--json", type=Path, metavar="FILE")
    loader.add_argument(
        "--recipe",
        metavar="MODULE_OR_FILE:FUNCTION",
        help="time this recipe's own training loader against its own model step instead "
        "(any modality, e.g. recipes/fsdd.py:shards); --set overrides apply to it",
    )
    add_overrides(loader, "train.batch_size=32 (with --recipe)")
    loader.set_defaults(func=_loader)

    loop = _recipe_command(
        sub,
        "train",
        _train,
        "train.num_workers=1",
        help="a recipe's whole training loop against its model step alone, in one process",
        description="Runs the trainer on the recipe (its data, augmentation, workers, logging) "
        "for --warmup + --steps steps in a scratch directory, and the same objective's step on "
        "one real batch, in alternating rounds; reports both rates and the share of the loop's "
        "time spent outside the step (target <= 3%).",
    )
    loop.add_argument("--steps", type=int, default=20, help="timed steps per round")
    loop.add_argument(
        "--warmup", type=int, default=5, help="untimed steps first (and the interval)"
    )
    loop.add_argument("--rounds", type=int, default=3)

    optim = _recipe_command(
        sub,
        "optim",
        _optim,
        "predictor.dim=384",
        help="one AdamW step over a recipe's parameters with each torch kernel, side by side",
    )
    optim.add_argument("--rounds", type=int, default=20)

    extract = _recipe_command(
        sub,
        "extract",
        _extract,
        "eval.layer=-1",
        help="frozen-feature extraction of a recipe's model, fp32 against bf16, side by side",
    )
    extract.add_argument("--images", type=int, default=2048, help="test items per extraction")
    extract.add_argument("--batch", default="256,1024", help="comma-separated batch sizes")
    extract.add_argument("--rounds", type=int, default=3)

    memory = sub.add_parser(
        "memory",
        help="one training step's peak memory (CUDA) and time against sequence length",
    )
    memory.add_argument("--dim", type=int, default=768)
    memory.add_argument("--depth", type=int, default=12)
    memory.add_argument("--heads", type=int, default=12)
    memory.add_argument("--lengths", default="1024,2048,4096,8192,16384", help="tokens T")
    memory.add_argument("--batch", type=int, default=1)
    memory.add_argument("--precision", default="bf16", choices=["fp32", "bf16"])
    memory.add_argument(
        "--variants", default="full,full-xformers", help="models (see nepa bench step)"
    )
    memory.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    memory.add_argument("--json", type=Path, metavar="FILE")
    memory.set_defaults(func=_memory)


def _recipe_command(
    sub: argparse._SubParsersAction,
    name: str,
    func: Callable[[argparse.Namespace], int],
    example: str,
    **kw: str,
) -> argparse.ArgumentParser:
    """A ``nepa bench NAME RECIPE`` subcommand with the flags every recipe benchmark takes
    (``--json``, ``--set``); the caller adds its own."""
    parser = sub.add_parser(name, **kw)
    parser.add_argument("recipe", metavar="MODULE_OR_FILE:FUNCTION")
    parser.add_argument("--json", type=Path, metavar="FILE")
    add_overrides(parser, example)
    parser.set_defaults(func=func)
    return parser


def _names(text: str) -> tuple[str, ...]:
    """``"a, b,"`` -> ``("a", "b")``: a comma-separated flag's non-empty entries."""
    return tuple(t.strip() for t in text.split(",") if t.strip())


def _loader(args: argparse.Namespace) -> int:
    from nepa.bench.loader import LoaderBenchConfig, run_loader_bench

    try:
        workers = tuple(int(w) for w in args.workers.split(","))
    except ValueError:
        print(
            f"nepa bench loader: error: --workers must be like 0,1,2, got {args.workers!r}",
            file=sys.stderr,
        )
        return 2
    if args.recipe:
        return _recipe_loader(args, workers)
    cfg = LoaderBenchConfig(
        archive=args.archive,
        work=args.work,
        workers=workers,
        batch=args.batch,
        batches=args.batches,
        rounds=args.rounds,
    )
    try:
        result = run_loader_bench(cfg)
    except FileNotFoundError as e:
        print(f"nepa bench loader: error: {e}", file=sys.stderr)
        return 2
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return 0


def _recipe_bench(
    args: argparse.Namespace,
    command: str,
    run: Callable[[RunConfig], dict],
    check: Callable[[], None] = lambda: None,
) -> int:
    """One benchmark of ``args.recipe`` (with its ``--set`` overrides): ``check`` the flags
    first, then ``run(cfg)``, then write ``--json``. A bad flag, recipe, file or setting is a
    one-line error and exit code 2."""
    from nepa.config import ConfigError, load_recipe

    try:
        check()
        cfg, _ = load_recipe(args.recipe, args.overrides)
        result = run(cfg)
    except (ConfigError, FileNotFoundError, ValueError) as e:
        print(f"nepa bench {command}: error: {e}", file=sys.stderr)
        return 2
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return 0


def _at_least_one(args: argparse.Namespace, *names: str) -> Callable[[], None]:
    def check() -> None:
        if any(getattr(args, n) < 1 for n in names):
            flags = [f"--{n}" for n in names]
            joined = ", ".join(flags[:-1]) + " and " + flags[-1] if len(flags) > 1 else flags[0]
            raise ValueError(f"{joined} must be at least 1")

    return check


def _recipe_loader(args: argparse.Namespace, workers: tuple[int, ...]) -> int:
    from nepa.bench.recipe_loader import run_recipe_loader_bench

    def run(cfg: RunConfig) -> dict:
        return run_recipe_loader_bench(
            cfg, workers=workers, batches=args.batches, rounds=args.rounds
        )

    return _recipe_bench(args, "loader", run)


def _train(args: argparse.Namespace) -> int:
    from nepa.bench.train_loop import run_train_bench

    def run(cfg: RunConfig) -> dict:
        return run_train_bench(cfg, steps=args.steps, warmup=args.warmup, rounds=args.rounds)

    return _recipe_bench(args, "train", run, _at_least_one(args, "steps", "warmup", "rounds"))


def _optim(args: argparse.Namespace) -> int:
    from nepa.bench.parts import bench_optim

    def run(cfg: RunConfig) -> dict:
        return bench_optim(cfg, args.rounds)

    return _recipe_bench(args, "optim", run, _at_least_one(args, "rounds"))


def _extract(args: argparse.Namespace) -> int:
    from nepa.bench.parts import bench_extract

    def run(cfg: RunConfig) -> dict:
        try:
            batches = tuple(int(b) for b in args.batch.split(","))
        except ValueError:
            raise ValueError(f"--batch must be like 256,1024, got {args.batch!r}") from None
        return bench_extract(cfg, images=args.images, batch_sizes=batches, rounds=args.rounds)

    return _recipe_bench(args, "extract", run, _at_least_one(args, "rounds"))


def _step(args: argparse.Namespace) -> int:
    import torch

    from nepa.bench.step import StepBenchConfig, check_config, format_report, run_step_bench

    if args.threads is not None:
        if args.threads < 1:
            print(
                f"nepa bench step: error: --threads must be >= 1, got {args.threads}",
                file=sys.stderr,
            )
            return 2
        torch.set_num_threads(args.threads)
    cfg = StepBenchConfig(
        dim=args.dim,
        depth=args.depth,
        heads=args.heads,
        tokens=args.tokens,
        batch=args.batch,
        precisions=_names(args.precision),
        steps=args.steps,
        warmup=args.warmup,
        device=args.device,
        matmul_size=args.matmul_size,
        profile=args.profile,
        variants=_names(args.variants) if args.variants else None,
    )
    try:
        check_config(cfg)
    except ValueError as e:  # bad sizes, unknown precision, no CUDA: the user's to fix
        print(f"nepa bench step: error: {e}", file=sys.stderr)
        return 2
    result = run_step_bench(cfg)
    print(format_report(result))
    if args.json is not None:
        args.json.write_text(json.dumps(result, indent=2))
    return 0


def _memory(args: argparse.Namespace) -> int:
    from nepa.bench.memory import MemoryBenchConfig, bench_memory
    from nepa.bench.models import VARIANTS
    from nepa.device import pick_device
    from nepa.predictor import PredictorConfig

    try:
        lengths = tuple(int(n) for n in args.lengths.split(","))
        variants = _names(args.variants)
        unknown = sorted(set(variants) - set(VARIANTS))
        if unknown:
            raise ValueError(f"unknown --variants {unknown}; known: {', '.join(VARIANTS)}")
        if min(lengths) < 1 or args.batch < 1:
            raise ValueError("--lengths and --batch must be positive")
        PredictorConfig(dim=args.dim, depth=args.depth, heads=args.heads)
        device = pick_device(args.device)
        if "full-xformers" in variants and device.type != "cuda":
            raise ValueError("the full-xformers variant needs CUDA; use --variants full on a CPU")
    except ValueError as e:  # includes pydantic's ValidationError
        print(f"nepa bench memory: error: {str(e).splitlines()[0]}", file=sys.stderr)
        return 2
    cfg = MemoryBenchConfig(
        dim=args.dim,
        depth=args.depth,
        heads=args.heads,
        lengths=lengths,
        batch=args.batch,
        precision=args.precision,
        variants=variants,
    )
    result = bench_memory(cfg, device)
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return 0
