"""Noise schedulers for Diffusion Policy: DDPM, DDIM and DPM-Solver++ (second order, multistep), plus the
Gaussian-noise helper and the warm-up learning-rate schedules.

Each scheduler implements one fixed configuration of the corresponding ``diffusers`` 0.42 scheduler and
gives bit-identical results to it (``tests/test_schedulers.py`` checks this against diffusers):

* :class:`DDPMScheduler`: "fixed_small" variance, ``timestep_spacing="leading"``, ``steps_offset=0``;
* :class:`DDIMScheduler`: ``eta=0``, ``set_alpha_to_one=True``, "leading" spacing, ``steps_offset=0``;
* :class:`DPMSolverMultistepScheduler`: "dpmsolver++", ``solver_order=2``, "midpoint", ``lower_order_final``,
  "linspace" spacing, ``final_sigmas_type="zero"``, and for ``clip_sample`` dynamic thresholding with
  ratio 0.995 and ``sample_max_value=1`` (that is, a clip of the predicted clean sample to [-1, 1]).

The per-step coefficients are 0-dim float32 CPU tensors, as in diffusers: they enter the device kernels as
scalars, so a sampling loop on CUDA needs no host synchronisation and can be captured in a CUDA graph.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR

BETA_SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2")
"""Accepted ``beta_schedule`` names."""
PREDICTION_TYPES = ("epsilon", "sample")
"""Accepted ``prediction_type`` values: the network predicts the noise or the clean sample."""
BETA_START, BETA_END = 0.0001, 0.02
"""End points of the "linear" and "scaled_linear" beta schedules."""
MAX_BETA = 0.999
"""Cap of the cosine ("squaredcos_cap_v2") schedule's betas."""
THRESHOLD_RATIO, THRESHOLD_MAX = 0.995, 1.0
"""Dynamic thresholding of DPM-Solver++: per-row quantile of |x0| and the largest threshold."""
NUM_CYCLES = 0.5
"""Cosine learning-rate schedule: half a period, from the peak down to zero."""

Generators = torch.Generator | Sequence[torch.Generator] | None
"""One generator, one per batch row, or None (the default generator of the device)."""


# ------------------------------------------------------------------------------------------ schedules
def _cosine_alpha_bar(t: float) -> float:
    return math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2


def make_betas(num_train_timesteps: int, beta_schedule: str) -> torch.Tensor:
    """Float32 betas of the named schedule ("linear", "scaled_linear" or "squaredcos_cap_v2")."""
    n = num_train_timesteps
    if beta_schedule == "linear":
        return torch.linspace(BETA_START, BETA_END, n, dtype=torch.float32)
    if beta_schedule == "scaled_linear":
        return torch.linspace(BETA_START**0.5, BETA_END**0.5, n, dtype=torch.float32) ** 2
    if beta_schedule == "squaredcos_cap_v2":
        betas = [min(1 - _cosine_alpha_bar((i + 1) / n) / _cosine_alpha_bar(i / n), MAX_BETA) for i in range(n)]
        return torch.tensor(betas, dtype=torch.float32)
    raise ValueError(f"unknown beta_schedule {beta_schedule!r}; use one of {', '.join(BETA_SCHEDULES)}")


def randn_tensor(
    shape: Sequence[int],
    generator: Generators = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """Standard normal noise of ``shape`` on ``device``, drawn by ``generator``.

    With a sequence of generators, row ``i`` of the batch comes from ``generator[i]``. A CPU generator with
    another device draws on the CPU and the result is moved; a CUDA generator for a CPU tensor is an error.
    """
    device = torch.device(device) if isinstance(device, str) else device
    target = device or torch.device("cpu")
    rand_device = device
    if generator is not None and not isinstance(generator, torch.Generator):
        generator = list(generator)
        generator = generator[0] if len(generator) == 1 else generator
    if generator is not None:
        kind = (generator if isinstance(generator, torch.Generator) else generator[0]).device.type
        if kind != target.type and kind == "cpu":
            rand_device = torch.device("cpu")
        elif kind != target.type and kind == "cuda":
            raise ValueError(f"cannot draw a {target} tensor with a generator on {kind}")
    shape = tuple(shape)
    if isinstance(generator, list):
        row = (1, *shape[1:])
        rows = [torch.randn(row, generator=generator[i], device=rand_device, dtype=dtype) for i in range(shape[0])]
        return torch.cat(rows, dim=0).to(target)
    return torch.randn(shape, generator=generator, device=rand_device, dtype=dtype).to(target)


@dataclass
class SchedulerOutput:
    """Result of one denoising step."""

    prev_sample: torch.Tensor
    """The sample at the next (less noisy) timestep."""


class _BetaSchedule:
    """Configuration, betas and cumulative alphas shared by the three schedulers."""

    init_noise_sigma = 1.0
    """Scale of the initial noise."""

    def __init__(
        self,
        num_train_timesteps: int = 1000,
        beta_schedule: str = "linear",
        prediction_type: str = "epsilon",
        clip_sample: bool = True,
    ) -> None:
        if prediction_type not in PREDICTION_TYPES:
            accepted = ", ".join(PREDICTION_TYPES)
            raise ValueError(f"unsupported prediction_type {prediction_type!r}; use one of {accepted}")
        self.num_train_timesteps = int(num_train_timesteps)
        self.beta_schedule = beta_schedule
        self.prediction_type = prediction_type
        self.clip_sample = bool(clip_sample)
        self.betas = make_betas(self.num_train_timesteps, beta_schedule)
        self.alphas_cumprod = torch.cumprod(1.0 - self.betas, dim=0)
        self.num_inference_steps: int | None = None
        self.timesteps = torch.arange(self.num_train_timesteps - 1, -1, -1, dtype=torch.int64)

    def _check_steps(self, num_inference_steps: int) -> int:
        if not 0 < num_inference_steps <= self.num_train_timesteps:
            raise ValueError(
                f"num_inference_steps must be in [1, {self.num_train_timesteps}] (num_train_timesteps), "
                f"got {num_inference_steps}"
            )
        return int(num_inference_steps)


class _LeadingSchedule(_BetaSchedule):
    """Evenly spaced inference timesteps from 0 ("leading" spacing) and the forward noising process."""

    def set_timesteps(self, num_inference_steps: int) -> None:
        """Set ``timesteps`` (int64, CPU, descending) for ``num_inference_steps`` denoising steps."""
        n = self._check_steps(num_inference_steps)
        self.num_inference_steps = n
        self.timesteps = torch.arange(n - 1, -1, -1, dtype=torch.int64) * (self.num_train_timesteps // n)

    def add_noise(self, original: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        """Noise ``original`` to the levels ``timesteps`` (one per batch row): sqrt(a) x + sqrt(1 - a) noise."""
        if self.alphas_cumprod.device != original.device:
            self.alphas_cumprod = self.alphas_cumprod.to(original.device)
        cumprod = self.alphas_cumprod.to(original.dtype)[timesteps.to(original.device)].flatten()
        view = (-1,) + (1,) * (original.ndim - 1)
        return (cumprod**0.5).view(view) * original + ((1 - cumprod) ** 0.5).view(view) * noise

    def _clean(
        self, model_output: torch.Tensor, sample: torch.Tensor, alpha_prod: torch.Tensor, beta_prod: torch.Tensor
    ) -> torch.Tensor:
        """Predicted clean sample, before clipping."""
        if self.prediction_type == "epsilon":
            return (sample - beta_prod**0.5 * model_output) / alpha_prod**0.5
        return model_output

    def _clip(self, x0: torch.Tensor) -> torch.Tensor:
        return x0.clamp(-1.0, 1.0) if self.clip_sample else x0


class DDPMScheduler(_LeadingSchedule):
    """Ancestral DDPM sampling (Ho et al. 2020) with the "fixed_small" posterior variance."""

    def previous_timestep(self, timestep: int | torch.Tensor) -> int | torch.Tensor:
        """The timestep after ``timestep`` in the inference schedule (-1 after the last)."""
        if self.num_inference_steps is None:
            return timestep - 1
        index = (self.timesteps == timestep).nonzero(as_tuple=True)[0][0]
        return torch.tensor(-1) if index == len(self.timesteps) - 1 else self.timesteps[index + 1]

    def step(
        self,
        model_output: torch.Tensor,
        timestep: int | torch.Tensor,
        sample: torch.Tensor,
        generator: Generators = None,
    ) -> SchedulerOutput:
        """One reverse step from ``sample`` at ``timestep``; the added noise is drawn by ``generator``."""
        prev_t = self.previous_timestep(timestep)
        alpha_prod = self.alphas_cumprod[timestep]
        alpha_prod_prev = self.alphas_cumprod[prev_t] if prev_t >= 0 else torch.tensor(1.0)
        beta_prod, beta_prod_prev = 1 - alpha_prod, 1 - alpha_prod_prev
        alpha = alpha_prod / alpha_prod_prev
        beta = 1 - alpha
        x0 = self._clip(self._clean(model_output, sample, alpha_prod, beta_prod))
        x0_coeff = (alpha_prod_prev**0.5 * beta) / beta_prod
        sample_coeff = alpha**0.5 * beta_prod_prev / beta_prod
        prev = x0_coeff * x0 + sample_coeff * sample
        if timestep > 0:
            noise = randn_tensor(model_output.shape, generator, model_output.device, model_output.dtype)
            variance = torch.clamp(beta_prod_prev / beta_prod * beta, min=1e-20)
            prev = prev + variance**0.5 * noise
        return SchedulerOutput(prev)


class DDIMScheduler(_LeadingSchedule):
    """Deterministic DDIM sampling (Song et al. 2021, eta = 0); the final step goes to alpha_bar = 1."""

    def step(
        self,
        model_output: torch.Tensor,
        timestep: int | torch.Tensor,
        sample: torch.Tensor,
        generator: Generators = None,
    ) -> SchedulerOutput:
        """One deterministic step from ``sample`` at ``timestep`` (``generator`` is unused)."""
        if self.num_inference_steps is None:
            raise ValueError("call set_timesteps before step")
        prev_t = timestep - self.num_train_timesteps // self.num_inference_steps
        alpha_prod = self.alphas_cumprod[timestep]
        alpha_prod_prev = self.alphas_cumprod[prev_t] if prev_t >= 0 else torch.tensor(1.0)
        beta_prod = 1 - alpha_prod
        x0 = self._clean(model_output, sample, alpha_prod, beta_prod)
        eps = model_output if self.prediction_type == "epsilon" else (sample - alpha_prod**0.5 * x0) / beta_prod**0.5
        x0 = self._clip(x0)
        return SchedulerOutput(alpha_prod_prev**0.5 * x0 + (1 - alpha_prod_prev) ** 0.5 * eps)


def _alpha_sigma_lambda(sigma: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """alpha_t, sigma_t and the half log-SNR lambda_t of the noise level ``sigma = sigma_t / alpha_t``."""
    alpha = 1 / ((sigma**2 + 1) ** 0.5)
    sigma_t = sigma * alpha
    return alpha, sigma_t, torch.log(alpha) - torch.log(sigma_t)


def threshold_sample(
    x0: torch.Tensor, ratio: float = THRESHOLD_RATIO, max_value: float = THRESHOLD_MAX
) -> torch.Tensor:
    """Dynamic thresholding (Saharia et al. 2022): per batch row, clip to [-s, s] and divide by s, where s is the
    ``ratio`` quantile of |x0| clamped to [1, ``max_value``]."""
    dtype = x0.dtype
    batch, channels, *rest = x0.shape
    flat = x0 if dtype in (torch.float32, torch.float64) else x0.float()
    flat = flat.reshape(batch, channels * math.prod(rest))
    s = torch.clamp(torch.quantile(flat.abs(), ratio, dim=1), min=1, max=max_value).unsqueeze(1)
    return (torch.clamp(flat, -s, s) / s).reshape(batch, channels, *rest).to(dtype)


class DPMSolverMultistepScheduler(_BetaSchedule):
    """DPM-Solver++ (Lu et al. 2022), second order multistep, midpoint update, first order at the first and last
    step, ending at sigma = 0. ``clip_sample`` applies dynamic thresholding (:func:`threshold_sample`).

    It keeps per-run state (the previous clean-sample prediction and the step index), which
    :meth:`set_timesteps` resets: call it before every sampling loop.
    """

    def __init__(
        self,
        num_train_timesteps: int = 1000,
        beta_schedule: str = "linear",
        prediction_type: str = "epsilon",
        clip_sample: bool = True,
    ) -> None:
        super().__init__(num_train_timesteps, beta_schedule, prediction_type, clip_sample)
        self.sigmas = ((1 - self.alphas_cumprod) / self.alphas_cumprod) ** 0.5
        self._reset()

    def _reset(self) -> None:
        self.model_outputs: list[torch.Tensor | None] = [None, None]
        self.lower_order_nums = 0
        self.step_index: int | None = None

    def set_timesteps(self, num_inference_steps: int) -> None:
        """Set ``timesteps`` (int64, CPU, evenly spaced over [0, T-1], "linspace") and the noise levels ``sigmas``
        (float32, CPU, with a final 0); reset the multistep state."""
        n = self._check_steps(num_inference_steps)
        if n >= self.num_train_timesteps:  # "linspace" rounding would repeat a timestep: a step of size 0, NaN
            raise ValueError(f"DPM-Solver++ needs num_inference_steps below num_train_timesteps "
                             f"({self.num_train_timesteps}), got {n}; use ddpm for every training timestep")
        spaced = np.linspace(0, self.num_train_timesteps - 1, n + 1).round()[::-1][:-1]
        self.timesteps = torch.from_numpy(spaced.astype(np.int64))
        levels = ((1 - self.alphas_cumprod) / self.alphas_cumprod) ** 0.5
        self.sigmas = torch.cat([levels[self.timesteps], torch.zeros(1)])
        self.num_inference_steps = len(self.timesteps)
        self._reset()

    def _index_for(self, timestep: int | torch.Tensor) -> int:
        if isinstance(timestep, torch.Tensor):
            timestep = timestep.to(self.timesteps.device)
        found = (self.timesteps == timestep).nonzero()
        if len(found) == 0:
            return len(self.timesteps) - 1
        return int(found[1 if len(found) > 1 else 0].item())

    def _clean_sample(self, model_output: torch.Tensor, sample: torch.Tensor) -> torch.Tensor:
        x0 = model_output
        if self.prediction_type == "epsilon":
            alpha, sigma, _ = _alpha_sigma_lambda(self.sigmas[self.step_index])
            x0 = (sample - sigma * model_output) / alpha
        return threshold_sample(x0) if self.clip_sample else x0

    def step(
        self,
        model_output: torch.Tensor,
        timestep: int | torch.Tensor,
        sample: torch.Tensor,
        generator: Generators = None,
    ) -> SchedulerOutput:
        """One multistep update from ``sample`` at ``timestep`` (``generator`` is unused)."""
        if self.num_inference_steps is None:
            raise ValueError("call set_timesteps before step")
        if self.step_index is None:
            self.step_index = self._index_for(timestep)
        i = self.step_index
        x0 = self._clean_sample(model_output, sample)
        self.model_outputs = [self.model_outputs[1], x0]
        sample = sample.to(torch.float32)
        alpha_t, sigma_t, lambda_t = _alpha_sigma_lambda(self.sigmas[i + 1])
        _, sigma_s0, lambda_s0 = _alpha_sigma_lambda(self.sigmas[i])
        h = lambda_t - lambda_s0
        prev = (sigma_t / sigma_s0) * sample - (alpha_t * (torch.exp(-h) - 1.0)) * x0
        if self.lower_order_nums >= 1 and i != len(self.timesteps) - 1:
            _, _, lambda_s1 = _alpha_sigma_lambda(self.sigmas[i - 1])
            r0 = (lambda_s0 - lambda_s1) / h
            d1 = (1.0 / r0) * (x0 - self.model_outputs[0])
            prev = prev - 0.5 * (alpha_t * (torch.exp(-h) - 1.0)) * d1
        self.lower_order_nums = min(self.lower_order_nums + 1, 2)
        self.step_index += 1
        return SchedulerOutput(prev.to(x0.dtype))


Scheduler = DDPMScheduler | DDIMScheduler | DPMSolverMultistepScheduler
"""Any of the three samplers."""


# ------------------------------------------------------------------------------------ learning rates
def constant_schedule_with_warmup(optimizer: Optimizer, num_warmup_steps: int) -> LambdaLR:
    """Learning rate rising linearly from 0 over ``num_warmup_steps``, then constant."""

    def lr_lambda(step: int) -> float:
        if step < num_warmup_steps:
            return float(step) / float(max(1.0, num_warmup_steps))
        return 1.0

    return LambdaLR(optimizer, lr_lambda)


class WarmupCosine:
    """The factor of :func:`cosine_schedule_with_warmup` at a step. A callable object rather than a closure, so
    ``num_training_steps`` can be changed during a run (a schedule fitted to a time budget) and LambdaLR's
    ``state_dict`` carries it (LambdaLR saves the attributes of callable objects, not of functions)."""

    def __init__(self, num_warmup_steps: int, num_training_steps: int) -> None:
        self.num_warmup_steps = int(num_warmup_steps)
        self.num_training_steps = int(num_training_steps)

    def __call__(self, step: int) -> float:
        if step < self.num_warmup_steps:
            return float(step) / float(max(1, self.num_warmup_steps))
        progress = float(step - self.num_warmup_steps) / float(max(1, self.num_training_steps - self.num_warmup_steps))
        return max(0.0, 0.5 * (1.0 + math.cos(math.pi * NUM_CYCLES * 2.0 * progress)))


def cosine_schedule_with_warmup(optimizer: Optimizer, num_warmup_steps: int, num_training_steps: int) -> LambdaLR:
    """Learning rate rising linearly from 0 over ``num_warmup_steps``, then following half a cosine down to 0 at
    ``num_training_steps`` (changeable later through the schedule's ``lr_lambdas``, see :class:`WarmupCosine`)."""
    return LambdaLR(optimizer, WarmupCosine(num_warmup_steps, num_training_steps))


__all__ = [
    "BETA_SCHEDULES",
    "DDIMScheduler",
    "DDPMScheduler",
    "DPMSolverMultistepScheduler",
    "PREDICTION_TYPES",
    "Scheduler",
    "SchedulerOutput",
    "WarmupCosine",
    "constant_schedule_with_warmup",
    "cosine_schedule_with_warmup",
    "make_betas",
    "randn_tensor",
    "threshold_sample",
]
