"""Peer rows of the GPU benchmark, outside our trainer: the plain eager fp32 step fed by torch's DataLoader
(what users run today) and lerobot's DiffusionPolicy at the same shapes (imported on use).
"""

from __future__ import annotations

import math
from typing import Any

import torch

from rf_dp_agents.bench.settings import BenchmarkArgs
from rf_dp_agents.bench.timing import build_policy, timed
from rf_dp_agents.data import SequenceDataset


def eager_dataloader(args: BenchmarkArgs, cpu_dataset: SequenceDataset, device: torch.device) -> dict[str, Any]:
    """Plain eager fp32 step fed by torch's DataLoader (PyTorch defaults: TF32 off for matmuls)."""
    before = torch.cuda.memory_allocated()
    from torch.utils.data import DataLoader

    from rf_dp_agents.training.ema import EMA

    policy = build_policy(device, cpu_dataset)
    opt = torch.optim.AdamW(policy.parameters(), lr=1e-4, betas=(0.95, 0.999), weight_decay=1e-6)
    ema = EMA(policy)
    loader = DataLoader(cpu_dataset, batch_size=args.batch_size, shuffle=True, num_workers=args.num_workers,
                        pin_memory=True, drop_last=True, persistent_workers=True)
    it = iter(loader)
    torch.cuda.reset_peak_memory_stats()

    def one() -> None:
        nonlocal it
        try:
            batch = next(it)
        except StopIteration:
            it = iter(loader)
            batch = next(it)
        batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
        opt.zero_grad(set_to_none=True)
        loss = policy.compute_loss(batch)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(policy.parameters(), math.inf)
        opt.step()
        ema.update(policy)
        loss.item()

    timed(one, args.warmup_steps)
    seconds = timed(one, args.eager_steps)
    return {
        "samples_per_s": args.eager_steps * args.batch_size / seconds,
        "step_ms": 1000 * seconds / args.eager_steps,
        "peak_gpu_mem_gib": (torch.cuda.max_memory_allocated() - before) / 2**30,
    }


def lerobot_step(args: BenchmarkArgs, device: torch.device, image_hw: tuple[int, int]) -> dict[str, Any]:
    """lerobot's DiffusionPolicy training step at the same shapes, synthetic GPU batch, fp32 eager."""
    before = torch.cuda.memory_allocated()
    from lerobot.configs.types import FeatureType, PolicyFeature
    from lerobot.policies.diffusion.configuration_diffusion import DiffusionConfig
    from lerobot.policies.diffusion.modeling_diffusion import DiffusionPolicy as LeRobotDP

    cfg = DiffusionConfig(
        input_features={
            "observation.image": PolicyFeature(type=FeatureType.VISUAL, shape=(3, *image_hw)),
            "observation.state": PolicyFeature(type=FeatureType.STATE, shape=(8,)),
        },
        output_features={"action": PolicyFeature(type=FeatureType.ACTION, shape=(8,))},
        n_obs_steps=2, horizon=16, n_action_steps=8, crop_shape=None, pretrained_backbone_weights=None,
        use_group_norm=True, down_dims=(256, 512, 1024), device=str(device),
    )
    policy = LeRobotDP(cfg).to(device).train()
    opt = torch.optim.AdamW(policy.parameters(), lr=1e-4, betas=(0.95, 0.999), weight_decay=1e-6)
    b = args.batch_size
    batch = {
        "observation.image": torch.rand(b, 2, 3, *image_hw, device=device),
        "observation.state": torch.randn(b, 2, 8, device=device),
        "action": torch.randn(b, 16, 8, device=device),
        "action_is_pad": torch.zeros(b, 16, dtype=torch.bool, device=device),
    }
    torch.cuda.reset_peak_memory_stats()

    def one() -> None:
        opt.zero_grad(set_to_none=True)
        out = policy.forward(batch)
        loss = out[0] if isinstance(out, tuple) else out
        loss.backward()
        opt.step()
        loss.item()

    timed(one, args.warmup_steps)
    seconds = timed(one, args.eager_steps)
    return {
        "samples_per_s": args.eager_steps * b / seconds,
        "step_ms": 1000 * seconds / args.eager_steps,
        "peak_gpu_mem_gib": (torch.cuda.max_memory_allocated() - before) / 2**30,
    }


__all__ = ["eager_dataloader", "lerobot_step"]
