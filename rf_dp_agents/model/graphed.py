"""Action sampling captured in a CUDA graph: observation encoding plus the whole denoising loop in one replay.

A :class:`GraphedSampler` is built for one batch size, sampler and step count (``compile_unet``: the U-Net
compiled with torch.compile first, its Inductor kernels then captured like any others). Its inputs (uint8 images,
raw state, the initial noise) are copied into static buffers; one ``replay`` runs the encoder, every
U-Net call and every scheduler update with no Python in between. The initial noise is drawn outside the
graph, so a caller's generators still decide it; DDPM's per-step noise comes from the default CUDA
generator inside the graph (reseed it with ``seed`` for repeatable samples).
"""

from __future__ import annotations

from typing import Mapping

import torch

from rf_dp_agents.model.diffusion import DiffusionPolicy, make_scheduler


class GraphedSampler:
    """``sampler(obs, noise, seed=None) -> (B, T, A)`` raw actions, replaying a captured CUDA graph."""

    def __init__(
        self,
        policy: DiffusionPolicy,
        batch_size: int,
        sampler: str,
        num_inference_steps: int,
        warmup: int = 2,
        compile_unet: bool = False,
    ):
        device = policy.device
        if device.type != "cuda":
            raise ValueError("GraphedSampler needs the policy on a CUDA device")
        cfg = policy.config
        self.policy, self.batch_size = policy, int(batch_size)
        self.net = torch.compile(policy.noise_pred_net, dynamic=False) if compile_unet else policy.noise_pred_net
        self.sampler, self.num_inference_steps = sampler, int(num_inference_steps)
        to = cfg.obs_horizon
        self.static_obs: dict[str, torch.Tensor] = {
            key: torch.zeros((batch_size, to, *cfg.image_shape), dtype=torch.uint8, device=device)
            for key in cfg.camera_keys
        }
        self.static_obs[cfg.state_key] = torch.zeros((batch_size, to, cfg.state_dim), device=device)
        self.static_noise = torch.zeros((batch_size, cfg.pred_horizon, cfg.action_dim), device=device)
        self.scheduler = make_scheduler(cfg, sampler)
        self.scheduler.set_timesteps(self.num_inference_steps)
        self.timesteps_dev = self.scheduler.timesteps.to(device)
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream), torch.no_grad():
            for _ in range(max(warmup, 1)):
                self._body()
        torch.cuda.current_stream().wait_stream(stream)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph), torch.no_grad():
            self.static_out = self._body()

    def _body(self) -> torch.Tensor:
        cond = self.policy.encode_obs(self.static_obs)
        self.scheduler.set_timesteps(self.num_inference_steps)
        return self.policy.denoise(cond, self.static_noise, self.scheduler, self.timesteps_dev, net=self.net)

    @torch.no_grad()
    def __call__(self, obs: Mapping[str, torch.Tensor], noise: torch.Tensor, seed: int | None = None) -> torch.Tensor:
        """Sample actions for ``obs`` (already validated, batch ``batch_size``) starting from ``noise``."""
        for key, buffer in self.static_obs.items():
            buffer.copy_(obs[key], non_blocking=True)
        self.static_noise.copy_(noise, non_blocking=True)
        if seed is None:
            self.graph.replay()
        else:
            with torch.random.fork_rng(devices=[self.static_noise.device]):
                torch.cuda.manual_seed(seed)
                self.graph.replay()
        return self.static_out.clone()


__all__ = ["GraphedSampler"]
