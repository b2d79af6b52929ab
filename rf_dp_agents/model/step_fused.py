"""The DDPM and DDIM updates of a denoising step as one Triton kernel, for the sampling graphs that run the fused
U-Net (:mod:`rf_dp_agents.model.unet_fused`).

:meth:`DDPMScheduler.step` launches about ten element-wise kernels (the clean sample, its clipping, the update, the
noise's scale and sum) and :meth:`DDIMScheduler.step` about seven; at batch 1 each costs a launch more than its
work. Once the clean sample is clipped, both updates are affine in the sample and the model's output:

    x0 = clip(p * sample + q * output)
    prev = c_x0 * x0 + c_sample * sample + c_output * output + std * noise

with coefficients that depend only on the timestep (:func:`step_coefficients`), so :class:`FusedStepScheduler` runs
one kernel per step, plus DDPM's noise, drawn by the same ``randn_tensor`` call as the scheduler's (a seeded graph
draws the same noise either way). The result equals the scheduler's to float32 rounding, not bit for bit (the
eager schedulers stay bit-equal to diffusers'). The kernel needs Triton and a CUDA tensor, or Triton's interpreter
for CPU tensors (:func:`~rf_dp_agents.model.unet_fused.fused_unet_available`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from rf_dp_agents.model.groupnorm_kernels import interpreting
from rf_dp_agents.model.schedulers import DDIMScheduler, DDPMScheduler, Generators, SchedulerOutput, randn_tensor
from rf_dp_agents.model.unet_fused import triton_cdiv
from rf_dp_agents.model.unet_kernels import kernels as _kernels

_BLOCK = 512
"""Elements per program of the update kernel."""


@dataclass(frozen=True)
class StepCoefficients:
    """One step's update: ``x0 = clip(p * sample + q * output)`` (clipped to [-1, 1] when ``clip``), then
    ``prev = c_x0 * x0 + c_sample * sample + c_output * output + std * noise``; noise is drawn when ``draws_noise``."""

    p: float
    q: float
    clip: bool
    c_x0: float
    c_sample: float
    c_output: float
    std: float = 0.0
    draws_noise: bool = False


def fuses_step(scheduler: Any) -> bool:
    """Whether :class:`FusedStepScheduler` can run ``scheduler``'s update (DDPM and DDIM; not the multistep
    DPM-Solver++, whose update depends on the previous step's output)."""
    return isinstance(scheduler, (DDPMScheduler, DDIMScheduler))


def _check_fuses(scheduler: Any) -> None:
    if not fuses_step(scheduler):
        raise TypeError(f"no fused update for {type(scheduler).__name__}; DDPMScheduler and DDIMScheduler have one")


def step_coefficients(scheduler: DDPMScheduler | DDIMScheduler, timestep: int | torch.Tensor) -> StepCoefficients:
    """The coefficients of ``scheduler.step`` at ``timestep`` (timesteps already set for DDIM), from the scheduler's
    own float32 quantities in its order (so the kernel rounds as the scheduler does, not more exactly)."""
    _check_fuses(scheduler)
    t = int(timestep)
    if isinstance(scheduler, DDPMScheduler):
        prev_t = int(scheduler.previous_timestep(timestep))
    else:
        if scheduler.num_inference_steps is None:
            raise ValueError("call set_timesteps before step")
        prev_t = t - scheduler.num_train_timesteps // scheduler.num_inference_steps
    cumprod = scheduler.alphas_cumprod.cpu()
    alpha_prod = cumprod[t]
    alpha_prod_prev = cumprod[prev_t] if prev_t >= 0 else torch.tensor(1.0)
    beta_prod = 1 - alpha_prod
    if scheduler.prediction_type == "epsilon":  # x0 = (sample - sqrt(1 - a) * output) / sqrt(a)
        p, q = float(1 / alpha_prod**0.5), float(-(beta_prod**0.5) / alpha_prod**0.5)
    else:  # the output is the clean sample
        p, q = 0.0, 1.0
    clip = scheduler.clip_sample
    if isinstance(scheduler, DDPMScheduler):
        beta_prod_prev = 1 - alpha_prod_prev
        alpha = alpha_prod / alpha_prod_prev
        beta = 1 - alpha
        draws = t > 0
        std = float(torch.clamp(beta_prod_prev / beta_prod * beta, min=1e-20) ** 0.5) if draws else 0.0
        return StepCoefficients(p, q, clip, float((alpha_prod_prev**0.5 * beta) / beta_prod),
                                float(alpha**0.5 * beta_prod_prev / beta_prod), 0.0, std, draws)
    # DDIM (eta 0): prev = sqrt(a_prev) * x0 + sqrt(1 - a_prev) * eps, eps from the unclipped x0
    to_eps = (1 - alpha_prod_prev) ** 0.5
    if scheduler.prediction_type == "epsilon":
        return StepCoefficients(p, q, clip, float(alpha_prod_prev**0.5), 0.0, float(to_eps))
    root_beta = beta_prod**0.5  # eps = (sample - sqrt(a) * output) / sqrt(1 - a)
    return StepCoefficients(p, q, clip, float(alpha_prod_prev**0.5), float(to_eps / root_beta),
                            float(-to_eps * alpha_prod**0.5 / root_beta))


def fused_update(sample: torch.Tensor, output: torch.Tensor, co: StepCoefficients,
                 noise: torch.Tensor | None = None) -> torch.Tensor:
    """``prev`` of :class:`StepCoefficients` for ``sample`` and the model's ``output`` (same shape), float32."""
    if output.shape != sample.shape or (noise is not None and noise.shape != sample.shape):
        raise ValueError(f"the fused update needs sample, output and noise of one shape, got {tuple(sample.shape)}, "
                         f"{tuple(output.shape)} and {None if noise is None else tuple(noise.shape)}")
    if co.draws_noise and noise is None:
        raise ValueError("this step adds noise: pass the noise drawn for it")
    sample, output = sample.contiguous(), output.contiguous()
    noise = None if noise is None else noise.contiguous()
    prev = torch.empty(sample.shape, dtype=torch.float32, device=sample.device)
    n = sample.numel()
    _kernels(interpreting()).scheduler_step[(triton_cdiv(n, _BLOCK),)](
        sample, output, sample if noise is None else noise, prev, n,
        co.p, co.q, co.c_x0, co.c_sample, co.c_output, co.std,
        BLOCK=_BLOCK, CLIP=co.clip, HAS_NOISE=noise is not None,
    )
    return prev


class FusedStepScheduler:
    """``scheduler`` (DDPM or DDIM) with :meth:`step` computed by one kernel; its timesteps, ``set_timesteps`` and
    every other attribute are the scheduler's own."""

    def __init__(self, scheduler: DDPMScheduler | DDIMScheduler) -> None:
        _check_fuses(scheduler)
        self.scheduler = scheduler

    def __getattr__(self, name: str) -> Any:
        return getattr(self.__dict__["scheduler"], name)

    def step(self, model_output: torch.Tensor, timestep: int | torch.Tensor, sample: torch.Tensor,
             generator: Generators = None) -> SchedulerOutput:
        """The scheduler's step at ``timestep``; DDPM's noise is drawn by ``generator`` as the scheduler draws it."""
        co = step_coefficients(self.scheduler, timestep)
        noise = (randn_tensor(model_output.shape, generator, model_output.device, model_output.dtype)
                 if co.draws_noise else None)
        return SchedulerOutput(fused_update(sample, model_output, co, noise))


__all__ = ["FusedStepScheduler", "StepCoefficients", "fuses_step", "fused_update", "step_coefficients"]
