"""The training loop: batch -> objective -> loss -> backward (accumulated) -> clip -> step.

Everything else (building, checkpoints, distribution, logging) is delegated to named helpers.
"""

from __future__ import annotations

import logging
import math
import os
import signal
import time
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import torch
from tqdm import tqdm

from nepa.batch import batch_size, to_device
from nepa.config import ConfigError, RunConfig
from nepa.data.base import build_dataset, sample_batches
from nepa.data.loader import TrainLoader, train_loader
from nepa.data.sampler import check_layout
from nepa.data.shards.health import BadDataError
from nepa.predictor.sdpa_kernels import restore_kernels, tuned_kernels
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
from nepa.train.flops import FlopCounterMode
from nepa.train.optim import build_optimizer, schedule, set_lr
from nepa.train.resume import resume_changes
from nepa.train.rundir import (
    CONFIG,
    RunDir,
    RunDirError,
    export_weights,
    read_meta,
    relative_recipe,
)

log = logging.getLogger(__name__)


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
    overwrite: bool = False,
) -> TrainResult:
    """Train ``cfg`` into the run directory ``out``. A directory that already holds a run is
    refused unless ``resume`` (continue it) or ``overwrite`` (replace it) is given."""
    env = init_distributed(cfg.train.device, cfg.train.dist_timeout_s)
    return Trainer(cfg, Path(out), env, recipe).run(resume, progress, overwrite)


def step_seed(run_seed: int, step: int) -> int:
    """The seed of step ``step``'s randomness: a pure function of (run seed, step), the same on
    every rank, micro-batch split and resume."""
    return (run_seed * 1_000_003 + step) % (2**63)


class Trainer:
    def __init__(self, cfg: RunConfig, out: Path, env: DistEnv, recipe: str | None) -> None:
        self.cfg, self.env, self.recipe = cfg, env, recipe
        t = cfg.train
        try:  # before anything is built or written
            check_layout(t.batch_size, t.accum, env.rank, env.world)
        except ValueError as e:
            raise ConfigError(f"train.batch_size: {e}") from None
        self.run_dir = RunDir(out)
        try:  # what only building can check (a tokenizer file, modules that do not fit)
            self.objective = build_objective(cfg)
        except (ValueError, FileNotFoundError) as e:
            raise ConfigError(f"{cfg.objective.kind} objective: {e}") from None
        self.backend = place(self.objective, env.device)
        self.bf16, self.precision_reason = resolve_precision(cfg.train.precision, env.device)
        log.info(
            "precision: %s (%s)", "bf16 autocast" if self.bf16 else "fp32", self.precision_reason
        )
        self.model = wrap_model(self.objective, env)
        self.optimizer = build_optimizer(self.objective.param_groups(cfg.optim), cfg.optim)
        self.lr_at = schedule(cfg.optim, cfg.train.steps)
        self.dataset = build_dataset(cfg.data, split="train", train=True)
        self.step = 0
        try:  # a batch larger than the data, a stream that cannot be cut: said before any write
            self.loader()
        except ValueError as e:
            raise ConfigError(f"data / train.batch_size: {e}") from None
        self._stop_requested = False
        self._loader: TrainLoader | None = None
        self._restored_health: dict = {}
        self._saved_health: dict = {}
        self._metric_names: list[str] | None = None  # fixed by the objective's first step
        self._data_wait = 0.0  # seconds spent waiting for batches since the last log record
        self.flops_per_step: float | None = None  # counted on this start's first step
        self._resume: dict | None = None  # this start's resume: step, checkpoint, changes
        self._interrupts = 0
        self._pid = os.getpid()

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
            "sdpa_kernels": tuned_kernels(),
        }

    def restore(self) -> None:
        path = latest_checkpoint(self.run_dir.ckpt_dir)
        state = load_checkpoint(path)
        changes = resume_changes(
            self.cfg.model_dump(mode="json"), state["config"], str(self.run_dir.path / CONFIG)
        )
        self._resume = {"step": int(state["step"]), "checkpoint": path.name, "changes": changes}
        self._check_data_state(state.get("data"))
        self._restored_health = state.get("data_health") or {}
        self.objective.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        set_rng_state(state["rng"])
        try:  # the kernels the run has used
            restore_kernels(state.get("sdpa_kernels") or {})
        except ValueError as e:
            raise CheckpointError(f"{path}: {e}; resume from another checkpoint") from None
        self.step = int(state["step"])
        if self.env.is_main:  # the steps after the checkpoint are logged again: keep them once
            self.run_dir.truncate_metrics(self.step)
            self.run_dir.log({"step": self.step, "resume": self._resume})
        for k, (old, new) in self._resume["changes"].items():
            log.warning("resume changes %s: %r -> %r", k, old, new)
        log.info("resumed from %s at step %d", path, self.step)

    def save(self, rotate: bool = True) -> None:
        """Checkpoint this step. A stop's checkpoint (``rotate=False``) removes no older one, so
        repeated resume-and-stop cycles never lose the checkpoints a resume would need."""
        # A collective (the totals are summed over ranks), so before the rank-0-only write.
        self._saved_health = self._loader.health_state(self._reduce_sum)
        if self.env.is_main:
            keep = self.cfg.train.keep_ckpts if rotate else None
            path = save_checkpoint(self.run_dir.ckpt_dir, self.step, self.state(), keep)
            log.info("checkpoint: %s", path)
        barrier()

    def _reduce_sum(self, values: list[float]) -> list[float]:
        v = torch.tensor(values, dtype=torch.float64, device=self.env.device)
        return all_reduce(v, "sum").tolist()

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
        try:
            self.loader().check_resume(saved)
        except ValueError as e:
            raise CheckpointError(str(e)) from None

    def run(self, resume: bool, progress: bool = True, overwrite: bool = False) -> TrainResult:
        torch.use_deterministic_algorithms(self.cfg.train.deterministic, warn_only=True)
        try:
            self._take_run_dir(resume, overwrite)
            if resume:
                self.restore()
            else:
                self.objective.fit(partial(sample_batches, self.cfg.data))
            if self.env.is_main:
                self.run_dir.write_start(self.cfg.model_dump(mode="json"), self.meta())
        except BaseException:
            self.run_dir.close()
            raise
        old_term = signal.signal(signal.SIGTERM, self._on_signal)
        old_int = signal.signal(signal.SIGINT, self._on_signal)
        try:
            return self._loop(progress)
        finally:
            signal.signal(signal.SIGTERM, old_term)
            signal.signal(signal.SIGINT, old_int)
            self.run_dir.close()

    def _take_run_dir(self, resume: bool, overwrite: bool) -> None:
        """Rank 0 locks the directory and checks it may be written as asked; every rank then
        learns the outcome (a rank that went on alone would wait in a collective)."""
        error = None
        if self.env.is_main:
            try:
                self.run_dir.lock()
                found = self.run_dir.holds_a_run()
                if resume and not list_checkpoints(self.run_dir.ckpt_dir):
                    pass  # restore() says what is missing
                elif found and not resume and not overwrite:
                    raise RunDirError(
                        f"{self.run_dir.path} already holds a run ({', '.join(found)}): pass "
                        "--resume to continue it, --overwrite to replace it, or choose another --out"
                    )
                elif found and overwrite:
                    log.warning("--overwrite: removing the previous run in %s", self.run_dir.path)
                    self.run_dir.clear()
            except RunDirError as e:
                error = e
        flag = torch.tensor([float(error is not None)], device=self.env.device)
        if error is not None:
            all_reduce(flag, "max")
            raise error
        if all_reduce(flag, "max").item() > 0:
            raise RunDirError("rank 0 could not take the run directory (its log says why)")

    def meta(self) -> dict:
        return {
            "recipe": self.recipe,
            # the recipe file relative to the run, for a run copied with its code elsewhere
            "recipe_relative": relative_recipe(self.recipe, self.run_dir.path),
            "attention_backend": self.backend.name,
            "attention_reason": self.backend.reason,
            "world_size": self.env.world,
            "device": str(self.env.device),
            "precision": "bf16" if self.bf16 else "fp32",
            "precision_reason": self.precision_reason,
            # What evaluation needs to rebuild the input transform without the data source.
            "data_normalization": getattr(self.dataset, "normalization", None) or {},
            "resumes": self._previous_resumes() + ([self._resume] if self._resume else []),
        }

    def _previous_resumes(self) -> list[dict]:
        try:
            return list(read_meta(self.run_dir.path).get("resumes", []))
        except (FileNotFoundError, RunDirError):
            return []

    def _on_signal(self, signum, frame) -> None:
        """SIGTERM or Ctrl-C: save at the end of this step and exit; a second Ctrl-C aborts."""
        if os.getpid() != self._pid:
            return  # a forked loader worker: the trainer's process decides (and logs) once
        name = signal.Signals(signum).name
        if signum == signal.SIGINT and self._interrupts:
            raise KeyboardInterrupt  # a second Ctrl-C: at once, without saving this step
        self._interrupts += signum == signal.SIGINT
        log.warning(
            "%s: will save a checkpoint after this step and exit%s",
            name,
            " (Ctrl-C again to abort at once)" if signum == signal.SIGINT else "",
        )
        self._stop_requested = True

    def _loop(self, progress: bool) -> TrainResult:
        t, total = self.cfg.train, self.cfg.train.steps
        result = TrainResult(step=self.step, run_dir=self.run_dir.path)
        self._loader = self.loader()
        self._loader.restore_health(self._restored_health, self.env.is_main)
        batches = iter(self._loader)
        bar = tqdm(
            total=total,
            initial=self.step,
            disable=not (progress and self.env.is_main),
            dynamic_ncols=True,
        )
        tick, samples, tokens = time.perf_counter(), 0, 0.0
        self.objective.on_train_start(total)
        while self.step < total:
            lr = self.lr_at(self.step)
            set_lr(self.optimizer, lr)
            self.objective.on_step_start(self.step, step_seed(self.cfg.seed, self.step))
            loss, metrics, n = self._accumulate(batches)
            flags = [float(self._stop_requested), float(self._loader.fatal is not None)]
            reduced = all_reduce(
                torch.cat([loss.reshape(1), metrics, torch.tensor(flags, device=loss.device)])
            ).tolist()
            loss_all, stop_all, fatal_all = reduced[0], reduced[-2], reduced[-1]
            step_metrics = dict(zip(self._metric_names, reduced[1:-2], strict=True))
            if fatal_all > 0:
                self._stop_for_data()
            if not math.isfinite(loss_all):
                raise NonFiniteLossError(
                    f"loss is {loss_all} at step {self.step + 1}; stopping without saving. "
                    + self._after_nan()
                )
            grad_norm = self._optimizer_step()
            self.step += 1
            self.objective.on_step_end(self.step)
            result.losses.append(loss_all)
            samples += n * self.env.world
            tokens += step_metrics.get("tokens", 0.0) * t.accum * self.env.world
            log_now = self.step % t.log_every == 0 or self.step == total
            if log_now or self.step % self._loader.steps_per_epoch == 0:
                data_metrics, summary = self._data_report()
                if summary is not None and self.env.is_main:
                    self.run_dir.log(summary)
            if log_now:
                dt = time.perf_counter() - tick
                record = {
                    "step": self.step,
                    "loss": loss_all,
                    "lr": lr,
                    "grad_norm": grad_norm,
                    "samples_per_s": samples / dt,
                    "tokens_per_s": tokens / dt,
                    # share of the interval's wall time spent waiting for batches (timm's
                    # data_time): what a faster loader or more workers could win back
                    "data_wait": self._data_wait / dt,
                    "train_flops": self.flops_per_step * self.step,
                    **step_metrics,
                    **data_metrics,
                }
                if self.env.is_main:
                    self.run_dir.log(record)
                shown = {k: v for k, v in record.items() if k not in ("step", "lr", "grad_norm")}
                bar.set_postfix(
                    {
                        k.split("/")[-1]: f"{v:.4g}"
                        for k, v in shown.items()
                        if isinstance(v, int | float)
                    }
                )
                if not (progress and self.env.is_main):
                    log.info("step %d/%d: %s", self.step, total, _format(record))
                tick, samples, tokens, self._data_wait = time.perf_counter(), 0, 0.0, 0.0
            stats = self.objective.monitor(self.step)
            if stats and self.env.is_main:
                self.run_dir.log({"step": self.step, **stats})
            bar.update(1)
            if self.step % t.ckpt_every == 0 or self.step == total or stop_all > 0:
                self.save(rotate=not (stop_all > 0 and self.step < total))
            if stop_all > 0 and self.step < total:
                result.stopped_by = "signal"
                break
        bar.close()
        result.step = self.step
        if result.stopped_by == "completed" and self.env.is_main:
            export_weights(self.objective, self.run_dir.path)
        return result

    def _accumulate(self, batches) -> tuple[torch.Tensor, torch.Tensor, int]:
        """Forward/backward over ``accum`` micro-batches; returns (mean loss, the mean of each
        metric the objective returned (in ``self._metric_names`` order), samples). The first
        step of each start is counted by torch's FlopCounterMode: the step's training FLOPs
        (forward and backward, everything the objective runs, e.g. JEPA's EMA target), over all
        ranks, logged as ``train_flops`` (cumulative) so runs compare at equal compute."""
        if self.flops_per_step is not None:
            return self._micro_batches(batches)
        with FlopCounterMode(display=False) as counter:
            out = self._micro_batches(batches)
        self.flops_per_step = float(counter.get_total_flops()) * self.env.world
        log.info("training FLOPs per step: %.4g (counted on the first step)", self.flops_per_step)
        return out

    def _micro_batches(self, batches) -> tuple[torch.Tensor, torch.Tensor, int]:
        accum, dev = self.cfg.train.accum, self.env.device
        chunk = self.cfg.train.batch_size // accum  # samples per micro-step over all ranks
        total, sums, n = torch.zeros((), device=dev), None, 0
        for micro in range(accum):
            t0 = time.perf_counter()
            batch, meta = next(batches)
            self._data_wait += time.perf_counter() - t0
            # where this micro-batch starts in the step's global batch (the sampler's layout)
            self.objective.on_micro_batch(micro * chunk + self.env.rank * (chunk // self.env.world))
            self._loader.observe(meta, self.step * accum + micro, self.env.rank)
            batch = to_device(batch, dev, non_blocking=True)
            with (
                no_sync(self.model, micro < accum - 1),
                torch.autocast(dev.type, torch.bfloat16, enabled=self.bf16),
            ):
                loss, metrics = self.model(batch)
                (loss / accum).backward()
            total += loss.detach().float()
            values = self._metric_vector(metrics, dev)
            sums = values if sums is None else sums + values
            n += batch_size(batch)
        return total / accum, sums / accum, n

    def _metric_vector(self, metrics: dict, dev: torch.device) -> torch.Tensor:
        """The objective's metrics as one float tensor, names fixed by the first step (every
        rank and micro-batch must return the same names: they are reduced together)."""
        names = sorted(metrics)
        if self._metric_names is None:
            self._metric_names = names
        elif names != self._metric_names:
            raise RuntimeError(
                f"the objective returned metrics {names}, earlier {self._metric_names}: an "
                "objective must return the same metric names at every step"
            )
        if not names:
            return torch.zeros(0, device=dev)
        return torch.stack(
            [
                torch.as_tensor(metrics[k], dtype=torch.float32, device=dev).detach().float()
                for k in names
            ]
        )

    def _data_report(self) -> tuple[dict, dict | None]:
        """The source's health metrics and epoch summary (totals over all ranks, so every rank
        saves and raises BadDataError at the same step)."""
        try:
            return self._loader.report(self.step, self._reduce_sum)
        except BadDataError:
            self.save(rotate=False)
            raise

    def _stop_for_data(self) -> None:
        """A loader failed on some rank: drop this step's gradients, save, stop on every rank."""
        self.optimizer.zero_grad(set_to_none=True)
        self.save(rotate=False)
        raise BadDataError(
            self._loader.fatal
            or "a data loader failed on another rank (its log says why); stopping every rank"
        )

    def _after_nan(self) -> str:
        found = list_checkpoints(self.run_dir.ckpt_dir)
        if not found:
            return "No checkpoint was written yet: start again (e.g. with a lower optim.lr)"
        return (
            f"The last good checkpoint, {found[-1].name}, is intact: resume with --resume "
            "--set optim.lr=... (a lower rate) or --set optim.clip_grad=..."
        )

    def _optimizer_step(self) -> float:
        clip = self.cfg.optim.clip_grad
        params = [p for p in self.objective.parameters() if p.grad is not None]
        norm = torch.nn.utils.clip_grad_norm_(params, clip if clip is not None else float("inf"))
        if not torch.isfinite(norm):
            raise NonFiniteLossError(
                f"gradient norm is {norm.item()} at step {self.step + 1}; stopping without saving. "
                + self._after_nan()
            )
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return float(norm)


def _format(record: dict) -> str:
    """One log line: ``loss=-0.1234 lr=0.001 ...``."""
    return " ".join(
        f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
        for k, v in record.items()
        if k != "step"
    )
