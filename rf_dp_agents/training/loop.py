"""The training loop: one code path for 1 process and for N torchrun/DDP processes.

Per epoch, a permutation of the training windows seeded by (seed, epoch) is cut into global batches of
``batch_size * world_size * grad_accum_steps`` windows (the last partial one is dropped). Global batch k is
split into shards of ``batch_size``; shard ``s = rank * grad_accum_steps + micro`` is gathered by pure tensor
indexing (``SequenceDataset.get_batch``) and trained with the global torch RNG seeded by (seed, step, s), so
the noise, timesteps and crops of every sample depend on its place in the global batch, not on which process
holds it: N processes reproduce a 1-process run with N-fold gradient accumulation.

Metrics are fetched every ``log_flush_every`` steps in one transfer; a NaN or inf loss stops the run there,
before any later checkpoint is written. Rank 0 alone logs and writes. The parts live beside this module: the
optimiser step (:func:`~rf_dp_agents.training.step.train_step`) in ``step``, validation in ``validation``, jobs
and dataset shapes in ``jobs``, snapshots, best tracking and resume in ``checkpoints``, the choice and capture
of the CUDA-graph step in ``graphed``.
"""

from __future__ import annotations

import functools
import inspect
import logging
import math
import os
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from rf_dp_agents.architecture import adopt_architecture
from rf_dp_agents.data import SequenceDataset
from rf_dp_agents.training.budget import Budget, fit_schedule
from rf_dp_agents.training.checkpoints import BestTracker, RunKeeping, match_param_layout, package_versions
from rf_dp_agents.training.config import TrainConfig
from rf_dp_agents.training.distributed import (
    DistInfo,
    all_reduce_sum,
    barrier,
    broadcast_int,
    init_distributed,
    shutdown_distributed,
)
from rf_dp_agents.training.ema import EMA
from rf_dp_agents.training.graphed import GraphedTrainStep, StepChoice, make_graph_safe, make_optimizer
from rf_dp_agents.training.jobs import Job, adopt_dataset_shapes, place_dataset, plan_jobs
from rf_dp_agents.training.metrics import PEAK_GPU_MEMORY, VAL_ACTION_MSE, MetricsLogger, epoch_loss_stats
from rf_dp_agents.training.step import (
    LossModule,
    NonFiniteLossError,
    StepParts,
    make_lr_scheduler,
    seed_everything,
    step_seed,
    to_device,
    train_step,
)
from rf_dp_agents.training.validation import validate, validate_actions

log = logging.getLogger("rf_dp_agents.train")


def train(cfg: TrainConfig) -> list[Path]:
    """Train every job of ``cfg`` in turn (joining the torchrun process group if launched by torchrun)."""
    jobs = plan_jobs(cfg)
    info = init_distributed(cfg.device, cfg.dist_backend, cfg.dist_timeout_s)
    try:
        if info.is_main and len(jobs) > 1:
            log.info("training %d agents: %s", len(jobs), ", ".join(str(j.zarr_path) for j in jobs))
        return [Trainer(cfg, job, info).run() for job in jobs]
    finally:
        shutdown_distributed()


class Trainer(RunKeeping):
    """Trains one agent: builds data, model, optimiser; runs epochs; validates; writes snapshots."""

    def __init__(self, cfg: TrainConfig, job: Job, info: DistInfo) -> None:
        self.cfg, self.job, self.info = cfg, job, info
        self.run_dir = job.run_dir
        self.global_step = 0
        self.epoch = 0
        self.budget = Budget(cfg.max_minutes)
        self.tracker = BestTracker(cfg.early_stopping_patience)
        self.val_action_mse: float | None = None  # of this epoch's validation, for the checkpoint metadata
        self.wandb_run_id: str | None = None
        self.logger: MetricsLogger | None = None
        self._file_handler: logging.Handler | None = None
        self._deterministic_before = False
        self._cudnn_benchmark_before = torch.backends.cudnn.benchmark
        self._tf32_before = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
        self.resumed_from: Path | None = None
        self.graphed: GraphedTrainStep | None = None  # the captured optimiser step when CUDA graphs are on

    # ---- set-up -----------------------------------------------------------------------------------------
    def _setup(self) -> None:
        cfg, info = self.cfg, self.info
        seed_everything(cfg.seed)
        mcfg = adopt_architecture(cfg.model, self.job.architecture, str(self.job.zarr_path))
        self.dataset = SequenceDataset.for_model(
            self.job.zarr_path, mcfg, cfg.val_ratio, cfg.seed, cfg.max_train_episodes, cfg.image_key
        )
        self.model_cfg = adopt_dataset_shapes(mcfg, self.dataset.shapes, str(self.job.zarr_path))
        place_dataset(self.dataset, info.device, cfg.dataset_device, info.is_main)
        self.shard_batch = cfg.batch_size
        self.n_shards = info.world_size * cfg.grad_accum_steps
        self.global_batch = self.shard_batch * self.n_shards
        if self.global_batch > self.dataset.n_train:
            raise ValueError(
                f"{self.job.zarr_path}: the global batch ({cfg.batch_size} per process x {info.world_size} processes x "
                f"{cfg.grad_accum_steps} accumulation = {self.global_batch}) is larger than the {self.dataset.n_train} "
                f"training windows; lower --batch-size or use more data"
            )
        self.steps_per_epoch = self.dataset.n_train // self.global_batch
        self.schedule_epochs = cfg.epochs  # the epochs the LR schedule spans: fitted to --max-minutes if asked

        normalizer = self.dataset.fit_normalizer()
        torch.manual_seed(cfg.seed)
        from rf_dp_agents.model import DiffusionPolicy

        self.policy = DiffusionPolicy(self.model_cfg, normalizer).to(info.device)
        if self.channels_last:
            self.policy.encoders.to(memory_format=torch.channels_last)
        self.policy.train()
        params = [p for p in self.policy.parameters() if p.requires_grad]
        self.optimizer = make_optimizer(params, cfg.lr, tuple(cfg.adam_betas), cfg.weight_decay, info.device)
        self.scheduler = make_lr_scheduler(self.optimizer, cfg, self.schedule_epochs * self.steps_per_epoch)
        self.ema = None
        if cfg.use_ema:
            self.ema = EMA(self.policy, cfg.ema_power, cfg.ema_inv_gamma, cfg.ema_min_decay, cfg.ema_max_decay)
        loss_module: nn.Module = LossModule(self.policy, self.autocast_dtype)
        if info.distributed:
            device_ids = [info.device.index] if info.device.type == "cuda" else None
            # The normalizer's buffers are constants: synced once at construction, never per forward.
            new_api = "forward_sync_buffers" in inspect.signature(DistributedDataParallel).parameters
            sync = {"forward_sync_buffers": False} if new_api else {"broadcast_buffers": False}
            loss_module = DistributedDataParallel(loss_module, device_ids=device_ids, **sync)
        if self.compiled:
            loss_module = torch.compile(loss_module)
        self.parts = StepParts(
            loss_module, self.policy, self.optimizer, self.scheduler, self.ema, cfg.grad_clip_norm, params
        )

    def _choice(self) -> StepChoice:
        placed = getattr(self, "dataset", None)  # once set up: where place_dataset left it
        if placed is None:
            return StepChoice(self.cfg, self.info)
        return StepChoice(self.cfg, self.info, placed.device, placed.pinned)

    @property
    def compiled(self) -> bool:
        """Whether the loss is run through torch.compile (see ``TrainConfig.compile``)."""
        return self._choice().compiled

    @property
    def cuda_graphs(self) -> bool:
        """Whether the whole optimiser step is replayed as a CUDA graph (see ``TrainConfig.cuda_graphs``)."""
        return self._choice().cuda_graphs

    @property
    def autocast_dtype(self) -> torch.dtype | None:
        """bfloat16 when the loss runs under autocast (see ``TrainConfig.precision``), else None."""
        return self._choice().autocast_dtype

    @property
    def channels_last(self) -> bool:
        """Whether the image encoder is held channels_last (see ``TrainConfig.channels_last``)."""
        return self._choice().channels_last

    def _build_graph(self) -> None:
        """Capture the optimiser step when CUDA graphs are on (after resuming: the graph holds the live tensors)."""
        if self.graphed is not None:
            self.graphed.close()
        self.graphed = None
        if not self.cuda_graphs:
            return
        make_graph_safe(self.optimizer, self.info.device)
        self.graphed = GraphedTrainStep(
            self.policy, self.optimizer, self.ema, self.dataset, self.shard_batch, self.cfg.grad_clip_norm,
            autocast_dtype=self.autocast_dtype,
        )

    # ---- the loop ---------------------------------------------------------------------------------------
    def run(self) -> Path:
        """Train to the end (or early stop); return the run directory."""
        self.prepare()
        return self.fit()

    def prepare(self) -> None:
        """Load the data, build model and optimiser, resume if asked, open the run directory and logs."""
        cfg = self.cfg
        last = self.run_dir / "last"
        if not cfg.resume and (last.exists() or last.is_symlink()):
            raise FileExistsError(
                f"{self.run_dir} already holds a run (last/ exists); pass --resume to continue it "
                f"or choose another --output-dir"
            )
        self._deterministic_before = torch.are_deterministic_algorithms_enabled()
        self._cudnn_benchmark_before = torch.backends.cudnn.benchmark
        self._tf32_before = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
        if self.info.device.type == "cuda":
            torch.backends.cudnn.benchmark = not cfg.deterministic  # fixed shapes: let cuDNN time its kernels once
            torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = cfg.tf32
        if cfg.deterministic:
            if self.info.device.type == "cuda":
                os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # cuBLAS's condition for determinism
            torch.use_deterministic_algorithms(True)
        try:
            self._setup()
            self._resume_or_start()
            self._build_graph()
            self._open_run_dir()
        except BaseException:
            self._close()
            raise

    def fit(self) -> Path:
        """Run the remaining epochs (after :meth:`prepare`); return the run directory."""
        try:
            self._loop()
        finally:
            self._close()
        return self.run_dir

    def _close(self) -> None:
        """Close the metrics file, wandb, the log file and the host batch feed; restore the global settings."""
        if self.graphed is not None:
            self.graphed.close()
        if self.logger is not None:
            self.logger.close()
            self.logger = None
        if self._file_handler is not None:
            log.removeHandler(self._file_handler)
            self._file_handler.close()
            self._file_handler = None
        torch.use_deterministic_algorithms(self._deterministic_before)
        torch.backends.cudnn.benchmark = self._cudnn_benchmark_before
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = self._tf32_before

    def _loop(self) -> None:
        cfg, info = self.cfg, self.info
        bar = None
        if info.is_main and cfg.progress:
            from rf_dp_agents.progress import progress_bar

            bar = progress_bar(total=self.schedule_epochs * self.steps_per_epoch, initial=self.global_step,
                               desc="train", unit="step", dynamic_ncols=True)
        self.budget.start()
        try:
            while self.epoch < self.schedule_epochs:
                stop = self._run_epoch(bar)
                if stop:
                    break
        finally:
            if bar is not None:
                bar.close()
        barrier(info)

    def _run_epoch(self, bar: Any) -> bool:
        """Train one epoch, then validate/save as scheduled; return True to stop early."""
        cfg, info, ds = self.cfg, self.info, self.dataset
        epoch = self.epoch
        perm = torch.randperm(ds.n_train, generator=torch.Generator().manual_seed(cfg.seed * 100_003 + epoch))
        perm = perm.to(ds.device)  # window ids live where the data does: no host copy per step
        epoch_losses: list[float] = []
        pending: list[tuple[int, torch.Tensor, torch.Tensor, float]] = []
        data_wait = 0.0
        t_epoch, t_budget = time.perf_counter(), self.budget.epoch_started()
        shards = [info.rank * cfg.grad_accum_steps + m for m in range(cfg.grad_accum_steps)]
        for k in range(self.steps_per_epoch):
            t0 = time.perf_counter()
            base = k * self.global_batch
            b = self.shard_batch
            seeds = [step_seed(cfg.seed, self.global_step, s) for s in shards]
            lr = float(self.scheduler.get_last_lr()[0])
            if self.graphed is not None:
                ahead = perm[base + b : base + 2 * b] if k + 1 < self.steps_per_epoch else None
                loss, grad_norm = self.graphed(perm[base : base + b], seeds[0], next_ids=ahead)
                self.scheduler.step()
            else:
                micro = [to_device(ds.get_batch(perm[base + s * b : base + (s + 1) * b]), info.device) for s in shards]
                data_wait += time.perf_counter() - t0
                loss, grad_norm = train_step(self.parts, micro, seeds)
            self.global_step += 1
            pending.append((self.global_step, loss, grad_norm, lr))
            if len(pending) >= cfg.log_flush_every or k == self.steps_per_epoch - 1:
                epoch_losses += self._flush(pending, epoch)
                if bar is not None:
                    bar.update(len(pending))
                    elapsed = max(time.perf_counter() - t_epoch, 1e-9)
                    bar.set_postfix(epoch=f"{epoch + 1}/{self.schedule_epochs}", loss=f"{epoch_losses[-1]:.4f}",
                                    samples_per_s=f"{(k + 1) * self.global_batch / elapsed:.0f}")
                pending = []
        if info.device.type == "cuda":
            torch.cuda.synchronize(info.device)
        epoch_time = time.perf_counter() - t_epoch
        self.budget.record_train(self.budget.now() - t_budget)
        self.epoch = epoch + 1
        train_loss = sum(epoch_losses) / len(epoch_losses)
        if self.logger is not None:
            record = {
                "train/epoch": self.epoch,
                "train/global_step": self.global_step,
                **epoch_loss_stats(epoch_losses),
                "train/samples_per_s": self.steps_per_epoch * self.global_batch / epoch_time,
                "train/data_wait_s": data_wait,
            }
            if info.device.type == "cuda":
                record[PEAK_GPU_MEMORY] = torch.cuda.max_memory_allocated(info.device) / 2**30
            self.logger.log_many([record])
        self._fit_schedule(bar)
        t_validation = self.budget.now()
        out_of_time = self._out_of_time()
        last_epoch = self.epoch >= self.schedule_epochs or out_of_time
        val_loss = self.val_action_mse = None
        stop = out_of_time
        if out_of_time and self.epoch < self.schedule_epochs and info.is_main:
            log.info("stopping after epoch %d: the --max-minutes budget of %s minutes is spent", self.epoch, cfg.max_minutes)
        if self.epoch % cfg.val_every == 0 or last_epoch:
            val_loss = validate(self.eval_model, ds, info, cfg.batch_size, cfg.seed)
            if cfg.best_metric == "action_mse":
                self.val_action_mse = validate_actions(self.eval_model, ds, info, cfg.val_action_windows,
                                                       cfg.batch_size, cfg.seed)
            action_mse = self.val_action_mse
            score = action_mse if action_mse is not None else val_loss if val_loss is not None else train_loss
            if not math.isfinite(score):
                raise NonFiniteLossError(
                    f"validation score ({cfg.best_metric}) is {score} after epoch {self.epoch} (global step "
                    f"{self.global_step}); stopped; the last good checkpoint is {self.run_dir / 'last'}"
                )
            improved = self.tracker.update(score)
            if self.logger is not None:
                if val_loss is not None:
                    record = {"train/epoch": self.epoch, "train/global_step": self.global_step, "val/loss": val_loss}
                    if action_mse is not None:
                        record[VAL_ACTION_MSE] = action_mse
                    self.logger.log_many([record])
                else:
                    log.warning(
                        "no validation windows (val_ratio=%s): best/ follows the epoch's mean train loss", cfg.val_ratio
                    )
                self.logger.plot()
                log.info("epoch %d: train loss %.5f, val loss %s%s%s", self.epoch, train_loss,
                         "n/a" if val_loss is None else f"{val_loss:.5f}",
                         "" if action_mse is None else f", val action MSE {action_mse:.5f}",
                         " (best)" if improved else "")
            if improved and info.is_main:
                self._save_best(val_loss, train_loss)
            if self.tracker.should_stop:
                stop = True
                if info.is_main:
                    log.info(
                        "early stopping after epoch %d: no better %s in %d validations",
                        self.epoch, cfg.best_metric, self.tracker.bad,
                    )
        if info.is_main and (self.epoch % cfg.save_every == 0 or last_epoch or stop):
            self._save_last(val_loss, train_loss)
        if info.is_main and cfg.keep_every is not None and self.epoch % cfg.keep_every == 0:
            self._save_epoch_copy(val_loss, train_loss)
        if val_loss is not None:
            self.budget.record_validation(self.budget.now() - t_validation)
        return stop

    def _out_of_time(self) -> bool:
        """Whether ``--max-minutes`` has run out; every rank gets the same answer (any rank out stops all)."""
        if self.cfg.max_minutes is None:
            return False
        flag = torch.tensor([1.0 if self.budget.spent() else 0.0], device=self.info.device)
        all_reduce_sum(self.info, flag)
        return bool(flag.item() > 0)

    def _fit_schedule(self, bar: Any) -> None:
        """Fit the LR schedule to the time left (budget.fit_schedule), with every rank on rank 0's estimate."""
        fitted = fit_schedule(self.budget, self.scheduler, self.cfg, self.epoch, self.schedule_epochs,
                              self.steps_per_epoch, functools.partial(broadcast_int, self.info), self.info.is_main)
        if fitted != self.schedule_epochs and bar is not None:
            bar.total = fitted * self.steps_per_epoch
            bar.refresh()
        self.schedule_epochs = fitted

    def _flush(self, pending: list[tuple[int, torch.Tensor, torch.Tensor, float]], epoch: int) -> list[float]:
        """Fetch the pending steps' losses (averaged over ranks) and grad norms; log them; stop on NaN/inf."""
        losses = torch.stack([p[1] for p in pending]).float()
        all_reduce_sum(self.info, losses)
        losses = (losses / self.info.world_size).tolist()
        norms = torch.stack([p[2] for p in pending]).float().tolist()
        for (step, _, _, _), value in zip(pending, losses):
            if not math.isfinite(value):
                raise NonFiniteLossError(
                    f"training loss became {value} at global step {step} (epoch {epoch + 1}); stopped without "
                    f"saving; the last good checkpoint is {self.run_dir / 'last'}"
                )
        if self.logger is not None:
            self.logger.log_many(
                {"train/loss": value, "train/learning_rate": lr, "train/grad_norm": norm,
                 "train/epoch": epoch + 1, "train/global_step": step}
                for (step, _, _, lr), value, norm in zip(pending, losses, norms)
            )
        return losses


__all__ = [  # the trainer, and the names this module has always offered
    "BestTracker", "Job", "LossModule", "NonFiniteLossError", "StepParts", "Trainer", "adopt_dataset_shapes",
    "match_param_layout", "package_versions", "plan_jobs", "seed_everything", "step_seed", "train", "train_step",
    "validate",
]
