"""The training loop: batch -> objective -> loss -> backward (accumulated) -> clip -> step.

Everything else (building, checkpoints, distribution, logging) is delegated to named helpers.
"""

from __future__ import annotations

import json
import logging
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm import tqdm

from nepa.config import RunConfig
from nepa.data.base import build_dataset
from nepa.data.loader import TrainLoader, train_loader
from nepa.data.shards.health import BadDataError, DataHealth, Totals
from nepa.train.build import build_objective, place, resolve_precision
from nepa.train.checkpoint import (
    CheckpointError,
    latest_checkpoint,
    list_checkpoints,
    load_checkpoint,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from nepa.train.distributed import (
    DistEnv,
    all_reduce,
    barrier,
    init_distributed,
    no_sync,
    wrap_model,
)
from nepa.train.optim import build_optimizer, lr_at
from nepa.train.rundir import RunDir, export_weights

log = logging.getLogger(__name__)

# Keys that may differ between a checkpoint's config and the resuming run's config.
RESUME_MAY_DIFFER = {
    "train.log_every",
    "train.ckpt_every",
    "train.keep_ckpts",
    "train.num_workers",
    "train.device",
}


class NonFiniteLossError(RuntimeError):
    pass


@dataclass
class TrainResult:
    step: int
    losses: list[float] = field(default_factory=list)  # one per optimizer step, this process
    run_dir: Path | None = None
    stopped_by: str = "completed"


def train(
    cfg: RunConfig,
    out: Path,
    *,
    recipe: str | None = None,
    resume: bool = False,
    progress: bool = True,
) -> TrainResult:
    env = init_distributed(cfg.train.device)
    return Trainer(cfg, Path(out), env, recipe).run(resume, progress)


def flatten(d: dict, prefix: str = "") -> dict[str, object]:
    """{"a": {"b": 1}} -> {"a.b": 1}."""
    out = {}
    for k, v in d.items():
        out.update(flatten(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
    return out


class Trainer:
    def __init__(self, cfg: RunConfig, out: Path, env: DistEnv, recipe: str | None) -> None:
        self.cfg, self.env, self.recipe = cfg, env, recipe
        self.run_dir = RunDir(out)
        self.objective = build_objective(cfg)
        self.backend = place(self.objective, env.device)
        self.bf16, self.precision_reason = resolve_precision(cfg.train.precision, env.device)
        log.info(
            "precision: %s (%s)", "bf16 autocast" if self.bf16 else "fp32", self.precision_reason
        )
        self.model = wrap_model(self.objective, env)
        self.optimizer = build_optimizer(self.objective, cfg.optim)
        self.dataset = build_dataset(cfg.data, split="train", train=True)
        self.step = 0
        self._stop_requested = False
        self._loader: TrainLoader | None = None
        self.health: DataHealth | None = None
        self._restored_health: dict = {}
        self._saved_health: dict = {}
        self._data_fatal: str | None = None

    # -- state -------------------------------------------------------------------------------
    def state(self) -> dict:
        return {
            "model": self.objective.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "step": self.step,
            "micro_done": self.step * self.cfg.train.accum,
            "rng": rng_state(),
            "config": self.cfg.model_dump(mode="json"),
            "world_size": self.env.world,
            "data": self._data_state,
            "data_health": self._saved_health,
        }

    def restore(self) -> None:
        path = latest_checkpoint(self.run_dir.ckpt_dir)
        state = load_checkpoint(path)
        ours = flatten(json.loads(json.dumps(self.cfg.model_dump(mode="json"))))
        theirs = flatten(state["config"])
        diff = sorted(
            k
            for k in ours.keys() | theirs.keys()
            if ours.get(k) != theirs.get(k) and k not in RESUME_MAY_DIFFER
        )
        if diff:
            raise CheckpointError(
                f"config differs from the checkpoint's at {', '.join(diff)}; resume with the same "
                f"config (see {self.run_dir.path / 'config.json'}) or start a new --out"
            )
        self._check_data_state(state.get("data"))
        self._restored_health = state.get("data_health") or {}
        self.objective.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        set_rng_state(state["rng"])
        self.step = int(state["step"])
        log.info("resumed from %s at step %d", path, self.step)

    def save(self) -> None:
        totals = self._data_totals()  # a collective, so before the rank-0-only write
        self._saved_health = {} if totals is None else {"good": totals.good, "bad": totals.bad}
        if self.env.is_main:
            path = save_checkpoint(
                self.run_dir.ckpt_dir, self.step, self.state(), self.cfg.train.keep_ckpts
            )
            log.info("checkpoint: %s", path)
        barrier()

    # -- loop --------------------------------------------------------------------------------
    def loader(self) -> TrainLoader:
        t = self.cfg.train
        return train_loader(
            self.dataset,
            global_batch=t.batch_size,
            accum=t.accum,
            rank=self.env.rank,
            world=self.env.world,
            workers=t.num_workers,
            seed=self.cfg.seed,
            start_micro=self.step * t.accum,
            pin_memory=self.env.device.type == "cuda",
        )

    @property
    def _data_state(self) -> dict:
        return self._loader.state if self._loader is not None else {}

    def _check_data_state(self, saved: dict | None) -> None:
        """Shard streams resume exactly only with the layout they were cut for."""
        ours = self.loader().state
        if saved is None or saved.get("kind") != "shards" or ours.get("kind") != "shards":
            return
        diff = {k: (saved.get(k), ours.get(k)) for k in ours if saved.get(k) != ours.get(k)}
        if diff:
            what = ", ".join(f"{k}: checkpoint {a} vs now {b}" for k, (a, b) in diff.items())
            raise CheckpointError(
                f"the data stream was cut for another layout ({what}); a streamed run resumes "
                "exactly only with the same number of processes and train.num_workers"
            )

    def run(self, resume: bool, progress: bool = True) -> TrainResult:
        torch.use_deterministic_algorithms(self.cfg.train.deterministic, warn_only=True)
        if resume:
            self.restore()
        elif list_checkpoints(self.run_dir.ckpt_dir):
            raise CheckpointError(
                f"{self.run_dir.path} already holds checkpoints: pass --resume, or choose another --out"
            )
        if self.env.is_main:
            self.run_dir.write_start(self.cfg.model_dump(mode="json"), self.meta())
        old_handler = signal.signal(signal.SIGTERM, self._on_sigterm)
        try:
            return self._loop(progress)
        finally:
            signal.signal(signal.SIGTERM, old_handler)
            self.run_dir.close()

    def meta(self) -> dict:
        return {
            "recipe": self.recipe,
            "attention_backend": self.backend.name,
            "attention_reason": self.backend.reason,
            "world_size": self.env.world,
            "device": str(self.env.device),
            "precision": "bf16" if self.bf16 else "fp32",
            "precision_reason": self.precision_reason,
        }

    def _on_sigterm(self, signum, frame) -> None:
        log.warning("SIGTERM: will save a checkpoint after this step and exit")
        self._stop_requested = True

    def _loop(self, progress: bool) -> TrainResult:
        t, total = self.cfg.train, self.cfg.train.steps
        result = TrainResult(step=self.step, run_dir=self.run_dir.path)
        self._loader = self.loader()
        if self._loader.max_bad_fraction is not None:
            self.health = DataHealth(self._loader.max_bad_fraction)
            if self.env.is_main:  # the saved totals are over all ranks: add them once
                self.health.restore(self._restored_health)
        batches = iter(self._loader)
        bar = tqdm(
            total=total,
            initial=self.step,
            disable=not (progress and self.env.is_main),
            dynamic_ncols=True,
        )
        tick, samples, tokens = time.perf_counter(), 0, 0.0
        while self.step < total:
            lr = lr_at(self.step, self.cfg.optim, total)
            for group in self.optimizer.param_groups:
                group["lr"] = lr
            self._seed_step()
            loss, n, ntok = self._accumulate(batches)
            flags = torch.tensor(
                [float(self._stop_requested), float(self._data_fatal is not None)],
                device=loss.device,
            )
            loss_all, stop_all, fatal_all = all_reduce(
                torch.cat([loss.reshape(1).float(), flags])
            ).tolist()
            if fatal_all > 0:
                self._stop_for_data()
            if not torch.isfinite(torch.tensor(loss_all)):
                raise NonFiniteLossError(
                    f"loss is {loss_all} at step {self.step + 1}; stopping without saving, the last good "
                    f"checkpoint in {self.run_dir.ckpt_dir} is intact"
                )
            grad_norm = self._optimizer_step()
            self.step += 1
            result.losses.append(loss_all)
            samples += n * self.env.world
            tokens += ntok * self.env.world
            if self.step % t.log_every == 0 or self.step == total:
                dt = time.perf_counter() - tick
                record = {
                    "step": self.step,
                    "loss": loss_all,
                    "lr": lr,
                    "grad_norm": grad_norm,
                    "samples_per_s": samples / dt,
                    "tokens_per_s": tokens / dt,
                }
                record.update(self._data_check(epoch_end=False))
                if self.env.is_main:
                    self.run_dir.log(record)
                bar.set_postfix(
                    loss=f"{loss_all:.4f}",
                    tok_s=f"{tokens / dt:,.0f}",
                    smp_s=f"{samples / dt:,.0f}",
                )
                tick, samples, tokens = time.perf_counter(), 0, 0.0
            if self.health is not None and self.step % self._loader.steps_per_epoch == 0:
                self._data_check(epoch_end=True)
            stats = self._monitor()
            if stats and self.env.is_main:
                self.run_dir.log({"step": self.step, **stats})
            bar.update(1)
            if self.step % t.ckpt_every == 0 or self.step == total or stop_all > 0:
                self.save()
            if stop_all > 0 and self.step < total:
                result.stopped_by = "sigterm"
                break
        bar.close()
        result.step = self.step
        if result.stopped_by == "completed" and self.env.is_main:
            export_weights(self.objective, self.run_dir.path)
        return result

    def _seed_step(self) -> None:
        """Per-step randomness that must not depend on micro-batching, ranks or resumes (e.g.
        RoPE's coordinate rescale) comes from modules' ``set_step_seed(seed)`` hooks, given a
        seed that is a pure function of (run seed, step)."""
        seed = (self.cfg.seed * 1_000_003 + self.step) % (2**63)
        for m in self.objective.modules():
            hook = getattr(m, "set_step_seed", None)
            if callable(hook):
                hook(seed)

    def _accumulate(self, batches) -> tuple[torch.Tensor, int, float]:
        """Forward/backward over ``accum`` micro-batches; returns (mean loss, samples, tokens)."""
        accum, dev = self.cfg.train.accum, self.env.device
        bf16 = self.bf16
        total, n, ntok = torch.zeros((), device=dev), 0, 0.0
        for micro in range(accum):
            x, _, meta = next(batches)
            if meta is not None:
                self._data_meta(meta, self.step * accum + micro)
            x = x.to(dev, non_blocking=True)
            with (
                no_sync(self.model, micro < accum - 1),
                torch.autocast(dev.type, torch.bfloat16, enabled=bf16),
            ):
                loss, metrics = self.model(x)
                (loss / accum).backward()
            total += loss.detach().float()
            n += len(x)
            ntok += float(metrics.get("tokens", 0))
        return total / accum, n, ntok

    def _data_meta(self, meta: dict, expected_micro: int) -> None:
        """Take in a stream batch's report: counts, or the fatal flag of a failed loader."""
        if meta.get("fatal") is not None:
            if self._data_fatal is None:
                log.error("data loader on rank %d failed: %s", self.env.rank, meta["fatal"])
            self._data_fatal = meta["fatal"]
            return
        if meta["micro"] != expected_micro:
            raise RuntimeError(
                f"data stream out of order: got micro-batch {meta['micro']}, expected "
                f"{expected_micro} (a DataLoader that does not hand batches out in order?)"
            )
        if self.health is not None:
            self.health.update(meta["good"], meta["bad"])

    def _stop_for_data(self) -> None:
        """A loader failed on some rank: drop this step's gradients, save, stop on every rank."""
        self.optimizer.zero_grad(set_to_none=True)
        self.save()
        raise BadDataError(
            self._data_fatal
            or "a data loader failed on another rank (its log says why); stopping every rank"
        )

    def _data_totals(self) -> Totals | None:
        """Bad-data counts summed over all ranks (a collective: call on every rank)."""
        if self.health is None:
            return None
        v = torch.tensor(self.health.vector(), dtype=torch.float64, device=self.env.device)
        return DataHealth.totals(all_reduce(v, "sum").tolist())

    def _data_check(self, epoch_end: bool) -> dict:
        """Metrics, the end-of-epoch summary and the bad-data limit, from totals over all ranks
        (so every rank saves and raises BadDataError at the same step)."""
        totals = self._data_totals()
        if totals is None:
            return {}
        if epoch_end:
            epoch = self.step // self._loader.steps_per_epoch - 1
            worst = self.health.end_epoch()
            kinds = {k: n for k, n in totals.epoch_bad.items() if n}
            log.info(
                "epoch %d done: %d bad sample(s) %s; run total %d bad of %d read (%.3f%%)%s",
                epoch,
                sum(kinds.values()),
                kinds or "",
                totals.n_bad,
                totals.good + totals.n_bad,
                100 * totals.fraction,
                f"; worst shards on rank 0: {worst}" if worst else "",
            )
            if self.env.is_main:
                self.run_dir.log({"step": self.step, "data/epoch": epoch, "data/epoch_bad": kinds})
        try:
            self.health.check(totals, force=epoch_end)
        except BadDataError:
            self.save()
            raise
        return totals.metrics()

    def _optimizer_step(self) -> float:
        clip = self.cfg.optim.clip_grad
        params = [p for p in self.objective.parameters() if p.grad is not None]
        norm = torch.nn.utils.clip_grad_norm_(params, clip if clip is not None else float("inf"))
        if not torch.isfinite(norm):
            raise NonFiniteLossError(
                f"gradient norm is {norm.item()} at step {self.step + 1}; stopping without saving"
            )
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return float(norm)

    def _monitor(self) -> dict:
        fn = getattr(self.objective, "monitor", None)
        stats = fn(self.step) if fn is not None else {}
        return {f"collapse/{k}": v for k, v in stats.items()}
