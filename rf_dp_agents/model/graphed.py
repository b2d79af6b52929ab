"""Action sampling captured in a CUDA graph: observation encoding plus the whole denoising loop in one replay.

A :class:`GraphedSampler` is built for one batch size, scheduler and step count (``compile_unet``: the U-Net
compiled with torch.compile first, its Inductor kernels then captured like any others; ``bf16_unet``: a
:class:`Bf16Unet` of the policy's U-Net to run instead, its bf16 weights refreshed at the start of each replay;
``unet``: any module with the U-Net's contract to run instead, a :class:`~rf_dp_agents.model.unet_fused.FusedUnet`
for one; a :class:`Bf16Unet` can itself run its copy through a ``FusedUnet``; ``fused_step``: a DDPM or DDIM update
as one kernel per step, :class:`~rf_dp_agents.model.step_fused.FusedStepScheduler`).
Its inputs (uint8 images, raw state, the initial noise) are copied into static buffers; one ``replay`` runs the
encoder, every U-Net call and every scheduler update with no Python in between. The initial noise is drawn outside the
graph, so a caller's generators still decide it; DDPM's per-step noise comes from the default CUDA generator inside
the graph (reseeded with ``seed`` for repeatable samples), or with ``own_generator`` from a CUDA generator of the
graph's own, registered with it, so that graphs replaying at once on two streams never share a generator's state:
``seed`` then starts that generator from ``seed`` (the same noise as the default generator reseeded), and without
a seed the replay continues the default generator's stream and moves it on. A graph keeps the cuBLAS workspace of
the stream it was captured on (torch's one capture stream unless ``capture_stream`` names another), so graphs
that replay at the same time need different capture streams. With ``tf32`` (the default) the U-Net is
compiled and the graph captured with TF32 matmuls and convolutions allowed (``graph_setup.tf32_scope``): the replays
run in TF32 while the caller's global precision flags stay as they were.

The policy builds its graphs and hands them what they need (itself, as :class:`SamplingModel`, and a fresh
scheduler), so this module imports nothing from :mod:`rf_dp_agents.model.diffusion`.
"""

from __future__ import annotations

import copy
import time
from typing import Any, Mapping, Protocol, Sequence

import torch
from torch import nn

from rf_dp_agents.config import ModelConfig
from rf_dp_agents.model.graph_setup import tf32_scope
from rf_dp_agents.model.schedulers import Scheduler
from rf_dp_agents.model.step_fused import FusedStepScheduler, fuses_step
from rf_dp_agents.model.unet import ConditionalUnet1D
from rf_dp_agents.model.unet_fused import FusedUnet


COMPILED_UNETS = 64
"""Compilations of the U-Net's code that TorchDynamo keeps per process once a sampling graph compiles it
(:func:`raise_recompile_limit`)."""


def raise_recompile_limit(at_least: int = COMPILED_UNETS) -> int:
    """Raise TorchDynamo's per-code recompile limit to ``at_least`` (never lower it); return the limit in force.

    Every policy's U-Net runs the same ``forward`` code, compiled with static shapes once per batch size (and, on
    torch versions that guard on module identity, once per policy): a rollout of 200 envs pads its requests to 9
    batch sizes, several agents on older torch multiply that. Past Dynamo's default limit of 8 the rest would
    silently run uncompiled (9.3 instead of 5.2 ms per chunk on an H200).
    """
    import torch._dynamo as dynamo

    name = "recompile_limit" if hasattr(dynamo.config, "recompile_limit") else "cache_size_limit"
    setattr(dynamo.config, name, max(getattr(dynamo.config, name), at_least))
    return getattr(dynamo.config, name)


class Bf16Unet(nn.Module):
    """``unet`` run in bfloat16: a bf16 copy of its weights (half the bytes every denoising step reads) takes
    bf16 activations; the FiLM conditioning and the output stay float32, so the scheduler's update is unchanged.

    :meth:`refresh` copies the float32 weights into the bf16 copy. A sampling graph calls it inside the capture,
    so each replay sees weights updated in place since (an EMA model's, for instance). ``fused``: the bf16 copy runs
    through :class:`~rf_dp_agents.model.unet_fused.FusedUnet`'s kernels instead of its own forward.
    """

    film_dtype = torch.bfloat16
    """The dtype :meth:`forward` takes FiLM rows in: a sampling loop casts its FiLM tables to it once
    (``DiffusionPolicy.denoise``), so that no denoising step launches a cast per residual block."""

    def __init__(self, unet: ConditionalUnet1D, fused: bool = False) -> None:
        super().__init__()
        self.unet = unet
        self.bf16_net = copy.deepcopy(unet).to(torch.bfloat16)
        # held in a tuple, so not registered as a second submodule
        self._runner = (FusedUnet(self.bf16_net) if fused else self.bf16_net,)
        pairs = [(d, s) for d, s in zip(self.bf16_net.state_dict().values(), unet.state_dict().values())
                 if s.is_floating_point()]
        self._dst, self._src = [d for d, _ in pairs], [s for _, s in pairs]

    @torch.no_grad()
    def refresh(self) -> None:
        """Copy the float32 weights into the bf16 copy (one foreach copy)."""
        torch._foreach_copy_(self._dst, self._src)

    def forward(
        self,
        sample: torch.Tensor,
        timestep: torch.Tensor | int,
        global_cond: torch.Tensor,
        film: Sequence[torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """Same contract as :meth:`ConditionalUnet1D.forward`; float32 in and out (FiLM rows float32 or already
        ``film_dtype``: those are not cast again)."""
        film = self.unet.step_film(timestep, global_cond) if film is None else film
        films = [f.to(self.film_dtype) for f in film]  # no copy for rows already in film_dtype
        net = self._runner[0]
        # with its FiLM given, the bf16 net never reads global_cond: it is passed on as it is, not cast each step
        return net(sample.to(torch.bfloat16), timestep, global_cond, film=films).float()


class SamplingModel(Protocol):
    """What a sampling graph takes from the policy (a :class:`~rf_dp_agents.model.diffusion.DiffusionPolicy`)."""

    config: ModelConfig
    noise_pred_net: ConditionalUnet1D

    @property
    def device(self) -> torch.device: ...

    def encode_obs(self, obs: Mapping[str, torch.Tensor]) -> torch.Tensor: ...

    def denoise(self, cond: torch.Tensor, noise: torch.Tensor, scheduler: Scheduler,
                timesteps_dev: torch.Tensor, generator: Any = None, net: nn.Module | None = None) -> torch.Tensor: ...


class GraphedSampler:
    """``sampler(obs, noise, seed=None) -> (B, T, A)`` raw actions, replaying a captured CUDA graph."""

    def __init__(
        self,
        policy: SamplingModel,
        batch_size: int,
        scheduler: Scheduler,
        num_inference_steps: int,
        warmup: int = 2,
        compile_unet: bool = False,
        bf16_unet: Bf16Unet | None = None,
        unet: nn.Module | None = None,
        tf32: bool = True,
        own_generator: bool = False,
        capture_stream: torch.cuda.Stream | None = None,
        fused_step: bool = False,
    ):
        device = policy.device
        if device.type != "cuda":
            raise ValueError("GraphedSampler needs the policy on a CUDA device")
        cfg = policy.config
        self.policy, self.batch_size = policy, int(batch_size)
        self.bf16 = bf16_unet
        net = policy.noise_pred_net if bf16_unet is None else bf16_unet
        net = net if unet is None else unet
        if compile_unet:
            raise_recompile_limit()
        self.net = torch.compile(net, dynamic=False) if compile_unet else net
        self.num_inference_steps = int(num_inference_steps)
        to = cfg.obs_horizon
        self.static_obs: dict[str, torch.Tensor] = {
            key: torch.zeros((batch_size, to, *cfg.image_shape), dtype=torch.uint8, device=device)
            for key in cfg.camera_keys
        }
        self.static_obs[cfg.state_key] = torch.zeros((batch_size, to, cfg.state_dim), device=device)
        self.static_noise = torch.zeros((batch_size, cfg.pred_horizon, cfg.action_dim), device=device)
        self.scheduler = FusedStepScheduler(scheduler) if fused_step and fuses_step(scheduler) else scheduler
        self.scheduler.set_timesteps(self.num_inference_steps)
        self.timesteps_dev = self.scheduler.timesteps.to(device)
        self.generator = torch.Generator(device=device) if own_generator else None
        """With ``own_generator``: DDPM's per-step noise inside the graph (registered with it before the capture)."""
        t0 = time.perf_counter()
        with tf32_scope(tf32):  # compilation and capture only: replays keep the captured math mode
            stream = torch.cuda.Stream()
            stream.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(stream), torch.no_grad():
                for k in range(max(warmup, 1)):
                    self._body()
                    if k == 0:
                        torch.cuda.synchronize(device)
                        t1 = time.perf_counter()
            torch.cuda.current_stream().wait_stream(stream)
            torch.cuda.synchronize(device)
            t2 = time.perf_counter()
            self.graph = torch.cuda.CUDAGraph()
            if self.generator is not None:
                self.graph.register_generator_state(self.generator)
            with torch.cuda.graph(self.graph, stream=capture_stream), torch.no_grad():
                self.static_out = self._body()
            torch.cuda.synchronize(device)
        self.build_seconds = {"first_run": t1 - t0, "more_warmup": t2 - t1, "capture": time.perf_counter() - t2}
        """Where the build went: the first eager (or compiling) run, the other warm-up runs, the capture."""

    def _body(self) -> torch.Tensor:
        if self.bf16 is not None:
            self.bf16.refresh()
        cond = self.policy.encode_obs(self.static_obs)
        self.scheduler.set_timesteps(self.num_inference_steps)
        return self.policy.denoise(cond, self.static_noise, self.scheduler, self.timesteps_dev,
                                   generator=self.generator, net=self.net)

    @torch.no_grad()
    def __call__(self, obs: Mapping[str, torch.Tensor], noise: torch.Tensor, seed: int | None = None) -> torch.Tensor:
        """Sample actions for ``obs`` (already validated, batch ``batch_size``) starting from ``noise``."""
        for key, buffer in self.static_obs.items():
            buffer.copy_(obs[key], non_blocking=True)
        self.static_noise.copy_(noise, non_blocking=True)
        if self.generator is None:
            if seed is None:
                self.graph.replay()
            else:
                with torch.random.fork_rng(devices=[self.static_noise.device]):
                    torch.cuda.manual_seed(seed)
                    self.graph.replay()
        elif seed is not None:
            self.generator.manual_seed(seed)
            self.graph.replay()
        else:  # continue the default generator's stream: its state in, the replay, the advanced state back
            default = torch.cuda.default_generators[self.static_noise.device.index or 0]
            self.generator.set_state(default.get_state())
            self.graph.replay()
            default.set_state(self.generator.get_state())
        return self.static_out.clone()


__all__ = ["COMPILED_UNETS", "Bf16Unet", "GraphedSampler", "SamplingModel", "raise_recompile_limit"]
