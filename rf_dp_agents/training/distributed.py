"""Process-group plumbing for one code path on 1 or N processes (torchrun / DDP).

Under torchrun the environment holds ``RANK``, ``LOCAL_RANK`` and ``WORLD_SIZE``; :func:`init_distributed`
joins the group (nccl on CUDA, gloo on the CPU) with a finite timeout so a dead rank makes the others fail
instead of hanging. Without torchrun it returns a world of one and no collective is ever called.
:func:`torchrun_command` builds the command ``--gpus N`` re-launches the script with.

Commands (see the README):
  one node, 4 GPUs:  python -m torch.distributed.run --standalone --nproc-per-node 4 scripts/train.py ...
  (or simply)        python scripts/train.py ... --gpus 4
  two nodes:         python -m torch.distributed.run --nnodes 2 --nproc-per-node 8 --rdzv-backend c10d \\
                       --rdzv-endpoint HOST:29500 --rdzv-id RUN scripts/train.py ...   (on every node)
"""

from __future__ import annotations

import datetime
import os
import sys
from dataclasses import dataclass
from typing import Sequence

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistInfo:
    """Where this process stands: global rank, rank on its node, number of processes, its device."""

    rank: int
    local_rank: int
    world_size: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        """True on the process that logs and writes (rank 0)."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        """True when a process group of more than one process is in use."""
        return self.world_size > 1


def under_torchrun() -> bool:
    """True when launched by torchrun (or any launcher that sets WORLD_SIZE and RANK)."""
    return "WORLD_SIZE" in os.environ and "RANK" in os.environ


def pick_device(device: str, local_rank: int = 0) -> torch.device:
    """Resolve 'auto' | 'cuda' | 'cpu' to a concrete device (``cuda:<local_rank>`` for CUDA)."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeError("--device cuda was requested but CUDA is not available (use --device cpu)")
        if local_rank >= torch.cuda.device_count():
            raise RuntimeError(
                f"local rank {local_rank} has no GPU: only {torch.cuda.device_count()} visible "
                "(check CUDA_VISIBLE_DEVICES and --nproc-per-node)"
            )
        return torch.device("cuda", local_rank)
    if device == "cpu":
        return torch.device("cpu")
    raise ValueError(f"unknown device {device!r}; use 'auto', 'cuda' or 'cpu'")


def init_distributed(device: str = "auto", backend: str = "auto", timeout_s: float = 600.0) -> DistInfo:
    """Join the torchrun process group if there is one; else a world of one process."""
    if not under_torchrun():
        return DistInfo(0, 0, 1, pick_device(device))
    rank = int(os.environ["RANK"])
    world_size = int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    dev = pick_device(device, local_rank)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    if world_size == 1:
        return DistInfo(rank, local_rank, 1, dev)
    if backend == "auto":
        backend = "nccl" if dev.type == "cuda" else "gloo"
    if not dist.is_initialized():
        kwargs = {"device_id": dev} if backend == "nccl" else {}
        timeout = datetime.timedelta(seconds=float(timeout_s))
        dist.init_process_group(backend=backend, timeout=timeout, rank=rank, world_size=world_size, **kwargs)
    return DistInfo(rank, local_rank, world_size, dev)


def shutdown_distributed() -> None:
    """Leave the process group (no-op without one)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def barrier(info: DistInfo) -> None:
    """Wait for every rank (no-op for one process)."""
    if info.distributed:
        if info.device.type == "cuda":
            dist.barrier(device_ids=[info.device.index])
        else:
            dist.barrier()


def all_reduce_sum(info: DistInfo, tensor: torch.Tensor) -> torch.Tensor:
    """Sum ``tensor`` over ranks in place and return it (unchanged for one process)."""
    if info.distributed:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def broadcast_int(info: DistInfo, value: int) -> int:
    """Rank 0's integer, on every rank."""
    if not info.distributed:
        return int(value)
    t = torch.tensor([int(value)], dtype=torch.int64, device=info.device)
    dist.broadcast(t, src=0)
    return int(t.item())


def broadcast_flag(info: DistInfo, flag: bool) -> bool:
    """Rank 0's boolean, on every rank."""
    return bool(broadcast_int(info, 1 if flag else 0))


def torchrun_command(nproc: int, script: str, argv: Sequence[str]) -> list[str]:
    """``python -m torch.distributed.run --standalone --nproc-per-node N script argv...``."""
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(int(nproc))]
    return [*launcher, script, *argv]


__all__ = [
    "DistInfo",
    "all_reduce_sum",
    "barrier",
    "broadcast_flag",
    "broadcast_int",
    "init_distributed",
    "pick_device",
    "shutdown_distributed",
    "torchrun_command",
    "under_torchrun",
]
