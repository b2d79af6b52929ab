"""Validation of a training run: the diffusion loss over the held-out windows, and the action error of the
sampled chunks. Both are sharded round-robin over the ranks and seeded per batch or window, so their values
do not depend on the process count.
"""

from __future__ import annotations

import math
from typing import Any, Callable

import torch
from torch import nn

from rf_dp_agents.data import SequenceDataset
from rf_dp_agents.training.distributed import DistInfo, all_reduce_sum
from rf_dp_agents.training.step import step_seed, to_device

VAL_STREAM = 1 << 20
"""Offset of the validation RNG streams (kept apart from training steps)."""


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


__all__ = ["VAL_STREAM", "sharded_mean", "validate", "validate_actions"]
