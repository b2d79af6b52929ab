"""One optimiser step of the eager path, and the seeds that make it independent of the process count.

:func:`train_step` is the whole optimiser step (forward, backward, clip, AdamW, LR schedule, EMA) as a
separate function that returns device tensors and never synchronises with the host. Shard ``s`` of global
step ``k`` trains with the global torch RNG seeded by :func:`step_seed` ``(seed, k, s)``, so N processes
reproduce a 1-process run with N-fold gradient accumulation.
"""

from __future__ import annotations

import contextlib
import math
import random
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from rf_dp_agents.training.config import TrainConfig
from rf_dp_agents.training.ema import EMA

Batch = dict[str, torch.Tensor]


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


def to_device(batch: Batch, device: torch.device) -> Batch:
    """Move a batch to ``device`` (asynchronously from pinned memory where possible)."""
    return {key: value.to(device, non_blocking=True) for key, value in batch.items()}


def seed_everything(seed: int) -> None:
    """Seed Python, numpy and torch (CPU and CUDA)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def make_lr_scheduler(
    optimizer: torch.optim.Optimizer, cfg: TrainConfig, total_steps: int
) -> torch.optim.lr_scheduler.LRScheduler:
    """The learning-rate schedule ``cfg`` names (cosine or constant, after ``lr_warmup_steps`` of warm-up)."""
    from rf_dp_agents.model.schedulers import constant_schedule_with_warmup, cosine_schedule_with_warmup

    if cfg.lr_scheduler == "cosine":
        return cosine_schedule_with_warmup(optimizer, cfg.lr_warmup_steps, total_steps)
    return constant_schedule_with_warmup(optimizer, cfg.lr_warmup_steps)


__all__ = [
    "Batch",
    "LossModule",
    "NonFiniteLossError",
    "StepParts",
    "make_lr_scheduler",
    "seed_everything",
    "step_seed",
    "to_device",
    "train_step",
]
