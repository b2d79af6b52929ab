"""The training loop: one code path for 1 process and for N torchrun/DDP processes.

Per epoch, a permutation of the training windows seeded by (seed, epoch) is cut into global batches of
``batch_size * world_size * grad_accum_steps`` windows (the last partial one is dropped). Global batch k is
split into shards of ``batch_size``; shard ``s = rank * grad_accum_steps + micro`` is gathered by pure tensor
indexing (``SequenceDataset.get_batch``) and trained with the global torch RNG seeded by (seed, step, s), so
the noise, timesteps and crops of every sample depend on its place in the global batch, not on which process
holds it: N processes reproduce a 1-process run with N-fold gradient accumulation.

:func:`train_step` is the whole optimiser step (forward, backward, clip, AdamW, LR schedule, EMA) as a
separate function that returns device tensors and never synchronises with the host. Metrics are fetched
every ``log_flush_every`` steps in one transfer; a NaN or inf loss stops the run there, before any later
checkpoint is written. Rank 0 alone logs and writes.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import importlib.metadata
import inspect
import logging
import math
import os
import platform
import random
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from rf_dp_agents.config import ModelConfig
from rf_dp_agents.data import SequenceDataset
from rf_dp_agents.training.config import (
    TrainConfig,
    default_output_dir,
    find_datasets,
    missing_dataset_message,
    resolve_dataset,
)
from rf_dp_agents.training.distributed import DistInfo, all_reduce_sum, barrier, init_distributed, shutdown_distributed
from rf_dp_agents.training.ema import EMA
from rf_dp_agents.training.graphed import GraphedTrainStep, make_graph_safe, make_optimizer, portable_state_dict
from rf_dp_agents.training.metrics import PEAK_GPU_MEMORY, VAL_ACTION_MSE, MetricsLogger, epoch_loss_stats
from rf_dp_agents.training.state import (
    CheckpointError,
    capture_rng,
    flatten,
    load_state_strict,
    load_training_state,
    load_weights,
    restore_rng,
    save_training_state,
    unflatten,
    write_json_atomic,
    write_snapshot,
)

log = logging.getLogger("rf_dp_agents.train")

Batch = dict[str, torch.Tensor]
VAL_STREAM = 1 << 20
"""Offset of the validation RNG streams (kept apart from training steps)."""


class NonFiniteLossError(RuntimeError):
    """The training or validation loss became NaN or inf; the run stopped without writing a checkpoint."""


class LossModule(nn.Module):
    """``forward(batch) = policy.compute_loss(batch)``, so DDP sees the loss computation as a forward pass.

    With ``autocast_dtype`` the loss runs under ``torch.autocast`` of that dtype (the backward follows it).
    """

    def __init__(self, policy: nn.Module, autocast_dtype: torch.dtype | None = None) -> None:
        super().__init__()
        self.policy = policy
        self.autocast_dtype = autocast_dtype

    def forward(self, batch: Batch) -> torch.Tensor:
        if self.autocast_dtype is None:
            return self.policy.compute_loss(batch)
        device_type = next(self.policy.parameters()).device.type
        with torch.autocast(device_type, dtype=self.autocast_dtype):
            return self.policy.compute_loss(batch)


def match_param_layout(optimizer: torch.optim.Optimizer) -> None:
    """Give every per-parameter optimiser state tensor (Adam's moments) its parameter's memory layout.

    A state loaded from a checkpoint is contiguous; a channels_last parameter needs channels_last moments
    for the fused AdamW kernel to read them element for element.
    """
    for param, state in optimizer.state.items():
        for key, value in state.items():
            if isinstance(value, torch.Tensor) and value.shape == param.shape and value.stride() != param.stride():
                state[key] = torch.empty_like(param, dtype=value.dtype).copy_(value)


class BestTracker:
    """Lowest validation score so far and the number of validations since it improved (for early stopping)."""

    def __init__(self, patience: int | None = None) -> None:
        self.patience = patience
        self.best: float | None = None
        self.bad = 0

    def update(self, score: float) -> bool:
        """Record a validation score; True when it is a new best (strictly lower)."""
        if self.best is None or score < self.best:
            self.best, self.bad = score, 0
            return True
        self.bad += 1
        return False

    @property
    def should_stop(self) -> bool:
        """True once ``patience`` validations in a row brought no improvement."""
        return self.patience is not None and self.bad >= self.patience


@dataclass
class StepParts:
    """Everything :func:`train_step` touches."""

    loss_module: nn.Module
    """The policy's loss as a module (DDP-wrapped when there are several processes)."""
    policy: nn.Module
    """The bare policy (its parameters are optimised, its weights averaged by the EMA)."""
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    ema: EMA | None
    grad_clip_norm: float | None
    params: list[nn.Parameter]


def step_seed(seed: int, step: int, shard: int) -> int:
    """Seed of the RNG stream of ``shard`` at optimiser step ``step`` (independent of the process count)."""
    return int(np.random.SeedSequence([seed, step, shard]).generate_state(1, dtype=np.uint64)[0]) >> 1


def train_step(
    parts: StepParts, micro_batches: Sequence[Batch], micro_seeds: Sequence[int]
) -> tuple[torch.Tensor, torch.Tensor]:
    """One optimiser step over ``micro_batches`` (gradients averaged over them and over ranks).

    Each micro-batch runs with the global torch RNG seeded by its entry of ``micro_seeds``. Returns the
    mean loss of this process's micro-batches and the global gradient norm, as device tensors (no host sync).
    """
    parts.optimizer.zero_grad(set_to_none=True)
    n = len(micro_batches)
    total: torch.Tensor | None = None
    for i, (batch, seed) in enumerate(zip(micro_batches, micro_seeds)):
        torch.manual_seed(seed)
        sync_later = isinstance(parts.loss_module, DistributedDataParallel) and i < n - 1
        with parts.loss_module.no_sync() if sync_later else contextlib.nullcontext():
            loss = parts.loss_module(batch)
            (loss / n).backward()
        total = loss.detach() if total is None else total + loss.detach()
    assert total is not None
    max_norm = parts.grad_clip_norm if parts.grad_clip_norm is not None else math.inf
    grad_norm = torch.nn.utils.clip_grad_norm_(parts.params, max_norm)
    parts.optimizer.step()
    parts.scheduler.step()
    if parts.ema is not None:
        parts.ema.update(parts.policy)
    return total / n, grad_norm


@torch.no_grad()
def sharded_mean(
    model: nn.Module, info: DistInfo, n: int, batch_size: int, batch_sum: Callable[[int, torch.Tensor], tuple[Any, int]]
) -> float:
    """Mean over ``n`` windows of what ``batch_sum(j, ids)`` adds up for batch j (its sum and its count), with the
    model in eval mode: ranks take batches round-robin and the sums are all-reduced, so the value does not depend
    on the process count. The global RNG state is left as it was."""
    was_training = model.training
    model.eval()
    totals = torch.zeros(2, dtype=torch.float64, device=info.device)
    devices = [info.device] if info.device.type == "cuda" else []
    try:
        with torch.random.fork_rng(devices=devices):
            for j in range(info.rank, math.ceil(n / batch_size), info.world_size):
                total, count = batch_sum(j, torch.arange(j * batch_size, min((j + 1) * batch_size, n)))
                totals[0] += total
                totals[1] += count
    finally:
        model.train(was_training)
    all_reduce_sum(info, totals)
    return float(totals[0] / totals[1])


def validate(model: nn.Module, dataset: SequenceDataset, info: DistInfo, batch_size: int, seed: int) -> float | None:
    """Mean diffusion loss over every validation window (None when there are none).

    Batch j uses the RNG stream (seed, VAL_STREAM + j), so the value does not depend on the process count.
    """
    if dataset.n_val == 0:
        return None

    def batch_sum(j: int, ids: torch.Tensor) -> tuple[torch.Tensor, int]:
        batch = to_device(dataset.get_batch(ids, "val"), info.device)
        torch.manual_seed(step_seed(seed, VAL_STREAM + j, 0))
        return model.compute_loss(batch).double() * len(ids), len(ids)

    return sharded_mean(model, info, dataset.n_val, batch_size, batch_sum)


def validate_actions(model: nn.Module, dataset: SequenceDataset, info: DistInfo, windows: int, batch_size: int,
                     seed: int) -> float | None:
    """Mean squared error of the executed action chunk the policy samples (its configured sampler) against the
    recorded one, over the first ``windows`` validation windows (None when there are none).

    Window i samples with noise seeded (seed + i), so the value does not depend on the process count. Sampling
    runs without CUDA graphs (none are kept alive during training).
    """
    from rf_dp_agents.offline_eval import chunk_error_sums

    n = min(dataset.n_val, windows)
    if n == 0:
        return None

    def batch_sum(_: int, ids: torch.Tensor) -> tuple[float, int]:
        squared, _, count = chunk_error_sums(model, dataset, ids, "val", seed)
        return squared, count

    graphs, model.cuda_graphs = model.cuda_graphs, False
    try:
        return sharded_mean(model, info, n, batch_size, batch_sum)
    finally:
        model.cuda_graphs = graphs


def to_device(batch: Batch, device: torch.device) -> Batch:
    """Move a batch to ``device`` (asynchronously from pinned memory where possible)."""
    return {key: value.to(device, non_blocking=True) for key, value in batch.items()}


def seed_everything(seed: int) -> None:
    """Seed Python, numpy and torch (CPU and CUDA)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def package_versions() -> dict[str, str]:
    """Versions of Python and the packages a run depends on."""
    out = {"python": platform.python_version()}
    for name in ("rf_dp_agents", "torch", "torchvision", "diffusers", "numpy", "zarr", "safetensors", "tyro", "wandb"):
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


# ---- jobs ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Job:
    """One agent to train: its dataset and its run directory."""

    zarr_path: Path
    run_dir: Path
    agent_id: int | None


def plan_jobs(cfg: TrainConfig) -> list[Job]:
    """The (dataset, run directory) pairs that ``cfg`` asks for; a missing dataset is a clear error."""
    cfg.check_data_source()
    if cfg.zarr_path is not None:
        if not cfg.zarr_path.exists():
            raise FileNotFoundError(
                f"--zarr-path {cfg.zarr_path} does not exist.\n"
                + (missing_dataset_message(cfg.data_root, cfg.task, cfg.agent_id, cfg.num_demos) if cfg.task else "")
            )
        run_dir = cfg.output_dir or default_output_dir(cfg.task, cfg.agent_id, cfg.zarr_path)
        return [Job(cfg.zarr_path, run_dir, cfg.agent_id if cfg.task else None)]
    assert cfg.task is not None
    if not cfg.all_agents:
        path = resolve_dataset(cfg.data_root, cfg.task, cfg.agent_id, cfg.num_demos)
        return [Job(path, cfg.output_dir or default_output_dir(cfg.task, cfg.agent_id, None), cfg.agent_id)]
    agents = sorted(find_datasets(cfg.data_root, cfg.task))
    if not agents:
        raise FileNotFoundError(missing_dataset_message(cfg.data_root, cfg.task, None, cfg.num_demos))
    jobs = []
    for agent in agents:
        path = resolve_dataset(cfg.data_root, cfg.task, agent, cfg.num_demos)
        run_dir = default_output_dir(cfg.task, agent, None)
        if cfg.output_dir is not None:
            run_dir = cfg.output_dir / run_dir.name
        jobs.append(Job(path, run_dir, agent))
    return jobs


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


# ---- one run ------------------------------------------------------------------------------------------------


def adopt_dataset_shapes(model_cfg: ModelConfig, shapes: dict[str, tuple[int, ...]], source: str) -> ModelConfig:
    """``model_cfg`` with the dataset's image shape; state or action sizes that disagree are an error."""
    (state_dim,), (action_dim,) = shapes["state"], shapes["action"]
    if action_dim != model_cfg.action_dim:
        raise ValueError(
            f"{source}: data/action has {action_dim} dims per step but the model expects action_dim="
            f"{model_cfg.action_dim} (pass --model.action-dim {action_dim} if the data is right)"
        )
    if state_dim != model_cfg.state_dim:
        raise ValueError(
            f"{source}: data/state has {state_dim} dims per step but the model expects state_dim="
            f"{model_cfg.state_dim} (pass --model.state-dim {state_dim} if the data is right)"
        )
    cameras = {key: tuple(int(v) for v in shapes[key]) for key in model_cfg.camera_keys}
    if len(set(cameras.values())) > 1:
        raise ValueError(f"{source}: the model's cameras must share one image shape, the dataset has {cameras}")
    image_shape = next(iter(cameras.values()))
    if image_shape == tuple(model_cfg.image_shape):
        return model_cfg
    changes: dict[str, Any] = {"image_shape": image_shape}
    crop = model_cfg.crop_shape
    if crop is not None:
        old_h, old_w = model_cfg.image_shape[1:]
        new_crop = (
            max(1, min(image_shape[1], round(crop[0] * image_shape[1] / old_h))),
            max(1, min(image_shape[2], round(crop[1] * image_shape[2] / old_w))),
        )
        changes["crop_shape"] = new_crop
    crop_note = ""
    if crop is not None and changes["crop_shape"] != crop:
        crop_note = f" and scaling crop_shape {crop} -> {changes['crop_shape']}"
    log.warning(
        "%s: images are %s but the model config says %s; using the dataset's shape%s",
        source, image_shape, tuple(model_cfg.image_shape), crop_note,
    )
    return dataclasses.replace(model_cfg, **changes)


class Trainer:
    """Trains one agent: builds data, model, optimiser; runs epochs; validates; writes snapshots."""

    def __init__(self, cfg: TrainConfig, job: Job, info: DistInfo) -> None:
        self.cfg, self.job, self.info = cfg, job, info
        self.run_dir = job.run_dir
        self.global_step = 0
        self.epoch = 0
        self._loop_started = time.perf_counter()
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
        mcfg = cfg.model
        self.dataset = SequenceDataset.for_model(
            self.job.zarr_path, mcfg, cfg.val_ratio, cfg.seed, cfg.max_train_episodes, cfg.image_key
        )
        self.model_cfg = adopt_dataset_shapes(mcfg, self.dataset.shapes, str(self.job.zarr_path))
        self._place_dataset()
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
        self.total_steps = self.steps_per_epoch * cfg.epochs

        normalizer = self.dataset.fit_normalizer()
        torch.manual_seed(cfg.seed)
        from rf_dp_agents.model import DiffusionPolicy

        self.policy = DiffusionPolicy(self.model_cfg, normalizer).to(info.device)
        if self.channels_last:
            self.policy.encoders.to(memory_format=torch.channels_last)
        self.policy.train()
        params = [p for p in self.policy.parameters() if p.requires_grad]
        self.optimizer = make_optimizer(params, cfg.lr, tuple(cfg.adam_betas), cfg.weight_decay, info.device)
        self.scheduler = self._make_scheduler()
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

    @property
    def compiled(self) -> bool:
        """Whether the loss is run through torch.compile (see ``TrainConfig.compile``)."""
        choice = self.cfg.compile
        if choice == "auto":
            return self.info.device.type == "cuda" and not self.cfg.deterministic and not self.cuda_graphs
        return choice == "on"

    def _graph_blockers(self) -> list[str]:
        """What keeps the whole step from being captured in a CUDA graph (empty: nothing)."""
        cfg, info = self.cfg, self.info
        blockers = []
        if info.device.type != "cuda":
            blockers.append("a CUDA device")
        if info.distributed:
            blockers.append("a single process (no torchrun/DDP)")
        if cfg.grad_accum_steps != 1:
            blockers.append("--grad-accum-steps 1")
        if cfg.compile == "on":
            blockers.append("the loss not compiled (--compile auto or off)")
        placed = getattr(self, "dataset", None)  # once set up: where _place_dataset left it
        if cfg.dataset_device == "cpu" or (placed is not None and placed.device != info.device):
            blockers.append("the dataset on the GPU (--dataset-device auto or train, and room for it there)")
        if cfg.deterministic:
            blockers.append("no --deterministic (deterministic runs take the eager step)")
        return blockers

    @property
    def cuda_graphs(self) -> bool:
        """Whether the whole optimiser step is replayed as a CUDA graph (see ``TrainConfig.cuda_graphs``)."""
        choice = self.cfg.cuda_graphs
        if choice == "off":
            return False
        blockers = self._graph_blockers()
        if choice == "on" and blockers:
            raise ValueError("--cuda-graphs on needs " + ", ".join(blockers))
        return not blockers

    @property
    def autocast_dtype(self) -> torch.dtype | None:
        """bfloat16 when the loss runs under autocast (see ``TrainConfig.precision``), else None."""
        choice = self.cfg.precision
        if choice == "auto":
            choice = "bf16" if self.cuda_graphs else "fp32"
        return torch.bfloat16 if choice == "bf16" else None

    @property
    def channels_last(self) -> bool:
        """Whether the image encoder is held channels_last (see ``TrainConfig.channels_last``)."""
        choice = self.cfg.channels_last
        return self.cuda_graphs if choice == "auto" else choice == "on"

    def _build_graph(self) -> None:
        """Capture the optimiser step when CUDA graphs are on (after resuming: the graph holds the live tensors)."""
        self.graphed = None
        if not self.cuda_graphs:
            return
        make_graph_safe(self.optimizer, self.info.device)
        self.graphed = GraphedTrainStep(
            self.policy, self.optimizer, self.ema, self.dataset, self.shard_batch, self.cfg.grad_clip_norm,
            autocast_dtype=self.autocast_dtype,
        )

    def _place_dataset(self) -> None:
        device, choice = self.info.device, self.cfg.dataset_device
        if device.type == "cpu" or choice == "cpu":
            return
        ds = self.dataset
        nbytes = sum(t.numel() * t.element_size() for t in ds.tensors)
        if choice == "auto":
            free, _ = torch.cuda.mem_get_info(device)
            if nbytes > free // 2:
                log.info("dataset (%.1f GiB) stays on the CPU: over half of the GPU's free memory", nbytes / 2**30)
                return
        ds.to(device)
        if self.info.is_main:
            log.info("dataset (%.2f GiB) held on %s", nbytes / 2**30, device)

    def _make_scheduler(self) -> torch.optim.lr_scheduler.LRScheduler:
        cfg = self.cfg
        if cfg.lr_scheduler == "cosine":
            from diffusers.optimization import get_cosine_schedule_with_warmup

            return get_cosine_schedule_with_warmup(self.optimizer, cfg.lr_warmup_steps, self.total_steps)
        from diffusers.optimization import get_constant_schedule_with_warmup

        return get_constant_schedule_with_warmup(self.optimizer, cfg.lr_warmup_steps)

    @property
    def eval_model(self) -> nn.Module:
        """The weights that are validated and saved: the EMA copy, or the raw policy without EMA."""
        return self.ema.averaged if self.ema is not None else self.policy

    # ---- resume -------------------------------------------------------------------------------------------
    def _resume_or_start(self) -> None:
        last = self.run_dir / "last"
        if not self.cfg.resume:
            return
        if not (last.exists() or last.is_symlink()):
            if self.info.is_main:
                log.info("--resume: %s has no last/ checkpoint yet; starting from scratch", self.run_dir)
            return
        if not last.exists():
            raise CheckpointError(f"cannot resume: {last} points at {last.resolve()}, which does not exist")
        self._load_state(last)

    def _load_state(self, last: Path) -> None:
        tensors, meta = load_training_state(last)
        dataset_hash = meta.get("dataset_hash")
        if dataset_hash != self.dataset.content_hash:
            raise CheckpointError(
                f"cannot resume from {last}: it was trained on a dataset with hash {dataset_hash}, "
                f"but {self.job.zarr_path} has hash {self.dataset.content_hash}"
            )
        saved_model = meta.get("model", {})
        ignore = {"sampler", "num_inference_steps"}
        current = self.model_cfg.to_dict()
        differ = sorted(k for k in current if k not in ignore and _jsonish(current[k]) != _jsonish(saved_model.get(k)))
        if differ:
            raise CheckpointError(
                f"cannot resume from {last}: model settings differ from the saved run: "
                + ", ".join(f"{k} saved {saved_model.get(k)!r} now {current[k]!r}" for k in differ)
            )
        load_state_strict(last / "training_state.safetensors", self.policy, tensors, prefix="model.")
        if self.ema is not None:
            load_weights(last / "model.safetensors", self.ema.averaged)
            self.ema.load_state(meta["ema"])
        try:
            self.optimizer.load_state_dict(unflatten(meta["optimizer"], tensors))
            match_param_layout(self.optimizer)
            # The schedule function itself is rebuilt from the current --epochs; only its counters load.
            self.scheduler.load_state_dict(unflatten(meta["scheduler"], tensors))
            # Rank 0's RNG states are saved and every rank restores them; the training noise does not depend
            # on them anyway (each step and shard reseeds), so runs resume exactly on any number of processes.
            restore_rng(unflatten(meta["rng"], tensors), self.info.device)
        except (KeyError, ValueError, TypeError, RuntimeError) as exc:
            raise CheckpointError(
                f"cannot resume from {last}: optimiser/scheduler/RNG state is damaged ({exc})"
            ) from exc
        self.epoch = int(meta["epoch"])
        self.global_step = int(meta["global_step"])
        if meta.get("best_metric", "val_loss") == self.cfg.best_metric:
            self.tracker.best = meta.get("best_score", meta.get("best_val_loss"))
            self.tracker.bad = int(meta.get("bad_validations", 0))
        else:  # scores of another metric are not comparable: the next validation starts a new best
            log.info("resuming with --best-metric %s (the run so far followed %s): best/ is replaced at the next "
                     "validation", self.cfg.best_metric, meta.get("best_metric", "val_loss"))
        self.wandb_run_id = meta.get("wandb_run_id")
        self.resumed_from = last

    # ---- writing ----------------------------------------------------------------------------------------
    def _checkpoint_metadata(self, val_loss: float | None, train_loss: float | None) -> dict[str, Any]:
        return {
            "epoch": self.epoch,
            "global_step": self.global_step,
            "val_loss": val_loss,
            "val_action_mse": self.val_action_mse,
            "best_metric": self.cfg.best_metric,
            "train_loss": train_loss,
            "weights": "ema" if self.ema is not None else "raw",
            "dataset_hash": self.dataset.content_hash,
            "dataset": str(self.job.zarr_path),
            "agent_id": self.job.agent_id,
            "task": self.cfg.task,
        }

    def _save_last(self, val_loss: float | None, train_loss: float | None) -> None:
        from rf_dp_agents.checkpoint import save_checkpoint

        tensors: dict[str, torch.Tensor] = {
            f"model.{k}": v.detach().cpu().contiguous().clone() for k, v in self.policy.state_dict().items()
        }
        meta = {
            "epoch": self.epoch,
            "global_step": self.global_step,
            "best_score": self.tracker.best,
            "best_metric": self.cfg.best_metric,
            "bad_validations": self.tracker.bad,
            "dataset_hash": self.dataset.content_hash,
            "model": self.model_cfg.to_dict(),
            "ema": self.ema.state() if self.ema is not None else None,
            "optimizer": flatten(portable_state_dict(self.optimizer), "optimizer", tensors),
            "scheduler": flatten(self.scheduler.state_dict(), "scheduler", tensors),
            "rng": flatten(capture_rng(self.info.device), "rng", tensors),
            "wandb_run_id": self.wandb_run_id,
            "config": self.cfg.to_dict(),
        }
        metadata = self._checkpoint_metadata(val_loss, train_loss)

        def fill(directory: Path) -> None:
            save_checkpoint(directory, self.eval_model, metadata)
            save_training_state(directory, tensors, meta)

        write_snapshot(self.run_dir, "last", f"last-e{self.epoch:05d}", fill)

    def _save_best(self, val_loss: float | None, train_loss: float | None) -> None:
        from rf_dp_agents.checkpoint import save_checkpoint

        metadata = self._checkpoint_metadata(val_loss, train_loss)
        write_snapshot(
            self.run_dir, "best", f"best-e{self.epoch:05d}", lambda d: save_checkpoint(d, self.eval_model, metadata)
        )

    def _write_run_json(self, resumed: bool) -> None:
        path = self.run_dir / "run.json"
        now = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
        doc: dict[str, Any] = {}
        if resumed and path.exists():
            try:
                import json

                doc = json.loads(path.read_text())
            except ValueError:
                doc = {}
        starts = doc.get("starts", [])
        starts.append({"time": now, "global_step": self.global_step, "epoch": self.epoch, "argv": sys.argv[1:],
                       "world_size": self.info.world_size})
        ds = self.dataset
        doc.update(
            {
                "config": self.cfg.to_dict(),
                "model": self.model_cfg.to_dict(),
                "dataset": {
                    "path": str(self.job.zarr_path),
                    "hash": ds.content_hash,
                    "shapes": {k: list(v) for k, v in ds.shapes.items()},
                    "episodes": int(len(ds.episode_ends)),
                    "train_episodes": int(ds.train_mask.sum()),
                    "val_episodes": int(ds.val_mask.sum()),
                    "train_windows": ds.n_train,
                    "val_windows": ds.n_val,
                },
                "agent_id": self.job.agent_id,
                "world_size": self.info.world_size,
                "global_batch": self.global_batch,
                "steps_per_epoch": self.steps_per_epoch,
                "versions": package_versions(),
                "starts": starts,
            }
        )
        write_json_atomic(path, doc)

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

    def _open_run_dir(self) -> None:
        cfg, info = self.cfg, self.info
        if info.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            self._file_handler = logging.FileHandler(self.run_dir / "train.log")
            self._file_handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
            log.addHandler(self._file_handler)
            self._write_run_json(resumed=self.global_step > 0)
            wandb_settings = None
            if cfg.wandb:
                wandb_settings = dict(
                    project=cfg.wandb_project, entity=cfg.wandb_entity, mode=cfg.wandb_mode,
                    name=self.run_dir.name, config=self.cfg.to_dict(), run_id=self.wandb_run_id,
                )
            resume_step = self.global_step if self.global_step > 0 else None
            self.logger = MetricsLogger(self.run_dir, resume_step, wandb_settings)
            self.wandb_run_id = self.logger.wandb_run_id
            if self.resumed_from is not None:
                log.info("resumed from %s: epoch %d, global step %d", self.resumed_from, self.epoch, self.global_step)
            n_params = sum(p.numel() for p in self.policy.parameters())
            log.info(
                "run %s: %s, %d train / %d val windows, %d params, %d process(es) on %s, global batch %d, "
                "%d steps/epoch, epochs %d..%d",
                self.run_dir, self.job.zarr_path, self.dataset.n_train, self.dataset.n_val, n_params,
                info.world_size, info.device, self.global_batch, self.steps_per_epoch, self.epoch + 1, cfg.epochs,
            )
            log.info("precision %s, channels_last %s, torch.compile %s, CUDA graphs %s",
                     "bf16 autocast" if self.autocast_dtype is not None else "fp32", self.channels_last,
                     self.compiled, self.graphed is not None)
            if self.compiled:
                log.info("torch.compile is on: the first steps include compiling the loss (1-2 minutes on a GPU)")

    def fit(self) -> Path:
        """Run the remaining epochs (after :meth:`prepare`); return the run directory."""
        try:
            self._loop()
        finally:
            self._close()
        return self.run_dir

    def _close(self) -> None:
        """Close the metrics file, wandb and the log file; restore the global determinism setting."""
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
            from tqdm.auto import tqdm

            bar = tqdm(total=self.total_steps, initial=self.global_step, desc="train", unit="step", dynamic_ncols=True)
        self._loop_started = time.perf_counter()
        try:
            while self.epoch < cfg.epochs:
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
        t_epoch = time.perf_counter()
        shards = [info.rank * cfg.grad_accum_steps + m for m in range(cfg.grad_accum_steps)]
        for k in range(self.steps_per_epoch):
            t0 = time.perf_counter()
            base = k * self.global_batch
            b = self.shard_batch
            seeds = [step_seed(cfg.seed, self.global_step, s) for s in shards]
            lr = float(self.scheduler.get_last_lr()[0])
            if self.graphed is not None:
                loss, grad_norm = self.graphed(perm[base : base + b], seeds[0])
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
                    bar.set_postfix(epoch=f"{epoch + 1}/{cfg.epochs}", loss=f"{epoch_losses[-1]:.4f}",
                                    samples_per_s=f"{(k + 1) * self.global_batch / elapsed:.0f}")
                pending = []
        if info.device.type == "cuda":
            torch.cuda.synchronize(info.device)
        epoch_time = time.perf_counter() - t_epoch
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
        out_of_time = self._out_of_time()
        last_epoch = self.epoch == cfg.epochs or out_of_time
        val_loss = self.val_action_mse = None
        stop = out_of_time
        if out_of_time and info.is_main:
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
            from rf_dp_agents.checkpoint import epoch_checkpoint_dir, save_checkpoint

            save_checkpoint(epoch_checkpoint_dir(self.run_dir, self.epoch), self.eval_model,
                            self._checkpoint_metadata(val_loss, train_loss))
        return stop

    def _out_of_time(self) -> bool:
        """Whether ``--max-minutes`` has run out; every rank gets the same answer (any rank out stops all)."""
        if self.cfg.max_minutes is None:
            return False
        over = (time.perf_counter() - self._loop_started) / 60.0 >= self.cfg.max_minutes
        flag = torch.tensor([1.0 if over else 0.0], device=self.info.device)
        all_reduce_sum(self.info, flag)
        return bool(flag.item() > 0)

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


def _jsonish(value: Any) -> Any:
    if isinstance(value, (tuple, list)):
        return [_jsonish(v) for v in value]
    return value


__all__ = [
    "BestTracker",
    "Job",
    "LossModule",
    "NonFiniteLossError",
    "StepParts",
    "Trainer",
    "adopt_dataset_shapes",
    "plan_jobs",
    "seed_everything",
    "step_seed",
    "train",
    "train_step",
    "validate",
]
