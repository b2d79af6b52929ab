"""Timing helpers of the GPU benchmarks, and the seed-config policy their rows build.

:func:`timed` (seconds for ``steps`` calls, the GPU synchronised at both ends) serves ``scripts/benchmark.py``;
:func:`bench` (ms per call and peak GiB after warm-up) serves ``scripts/benchmark_split.py``.
"""

from __future__ import annotations

import contextlib
import time
from typing import TYPE_CHECKING, Any, Callable

import torch

if TYPE_CHECKING:
    from rf_dp_agents.data import SequenceDataset
    from rf_dp_agents.model import DiffusionPolicy


def sync() -> None:
    """Wait for the GPU's queued work."""
    torch.cuda.synchronize()


def timed(fn: Callable[[], Any], steps: int) -> float:
    """Seconds for ``steps`` calls of ``fn``, the GPU synchronised before and after."""
    sync()
    start = time.perf_counter()
    for _ in range(steps):
        fn()
    sync()
    return time.perf_counter() - start


def build_policy(device: torch.device, dataset: SequenceDataset, **overrides: Any) -> DiffusionPolicy:
    """The seed-config policy (seeded weights, the dataset's image shape and normalizer) in train mode on
    ``device``; ``overrides`` are :class:`~rf_dp_agents.config.ModelConfig` fields."""
    from rf_dp_agents.config import ModelConfig
    from rf_dp_agents.model import DiffusionPolicy

    torch.manual_seed(0)
    cfg = ModelConfig(image_shape=dataset.shapes["img"], **overrides)
    return DiffusionPolicy(cfg, dataset.fit_normalizer()).to(device).train()


def bench(step: Callable[[], None], n: int = 20, warmup: int = 5) -> tuple[float, float]:
    """(ms per call, peak GiB) of ``step`` after ``warmup`` calls."""
    for _ in range(warmup):
        step()
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    for _ in range(n):
        step()
    torch.cuda.synchronize()
    return 1000 * (time.perf_counter() - t0) / n, torch.cuda.max_memory_allocated() / 2**30


def amp(bf16: bool) -> contextlib.AbstractContextManager:
    """bf16 autocast on CUDA when ``bf16``, else a no-op context."""
    return torch.autocast("cuda", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()


__all__ = ["amp", "bench", "build_policy", "sync", "timed"]
