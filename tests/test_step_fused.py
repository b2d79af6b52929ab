"""The DDPM and DDIM updates as one kernel (``step_fused``): its coefficients against the schedulers' own steps in
plain PyTorch, the kernel through Triton's CPU interpreter (in a subprocess with ``TRITON_INTERPRET=1`` set before
Triton is first imported) against the schedulers step by step and inside the denoising loop a sampling graph runs,
and its errors."""

from __future__ import annotations

import json

import pytest
import torch

from rf_dp_agents.config import tiny_model_config
from rf_dp_agents.model import make_scheduler
from rf_dp_agents.model.schedulers import BETA_SCHEDULES
from rf_dp_agents.model.step_fused import FusedStepScheduler, fused_update, fuses_step, step_coefficients
from triton_interpreted import run_interpreted

SHAPE = (3, 16, 4)


CASES = [{"sampler": sampler, "prediction_type": prediction_type, "clip_sample": clip, "beta_schedule": beta_schedule}
         for sampler in ("ddpm", "ddim") for prediction_type in ("epsilon", "sample") for clip in (True, False)
         for beta_schedule in BETA_SCHEDULES]
"""Every scheduler configuration the fused update serves (100 training timesteps)."""


def _schedulers():
    for case in CASES:
        case = dict(case)
        sampler = case.pop("sampler")
        yield f"{sampler}-{case}", tiny_model_config(num_train_timesteps=100, **case), sampler


def _gap(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b.double()).abs().max() / b.double().abs().max().clamp_min(1e-6)).item()


@pytest.mark.parametrize("steps", [1, 10, 100])
def test_the_coefficients_give_each_schedulers_step(steps: int) -> None:
    """clip(p * sample + q * output) and the affine update, in PyTorch, equal every step of DDPM (with the noise it
    drew) and DDIM, for both prediction types, clipped or not, on every beta schedule."""
    for name, config, sampler in _schedulers():
        scheduler = make_scheduler(config, sampler)
        scheduler.set_timesteps(steps)
        data = torch.Generator().manual_seed(steps)
        sample = 3 * torch.randn(SHAPE, generator=data)
        for t in scheduler.timesteps:
            output = 2 * torch.randn(SHAPE, generator=data)
            noise_gen = torch.Generator().manual_seed(int(t))
            expected = scheduler.step(output, t, sample, generator=noise_gen).prev_sample
            co = step_coefficients(scheduler, t)
            x0 = co.p * sample + co.q * output
            x0 = x0.clamp(-1, 1) if co.clip else x0
            prev = co.c_x0 * x0 + co.c_sample * sample + co.c_output * output
            assert co.draws_noise == (sampler == "ddpm" and int(t) > 0), name
            if co.draws_noise:
                prev = prev + co.std * torch.randn(SHAPE, generator=torch.Generator().manual_seed(int(t)))
            assert _gap(prev, expected) <= 1e-5, (name, int(t), _gap(prev, expected))
            sample = expected


SCRIPT = r"""
import json
import torch
from rf_dp_agents.config import tiny_model_config
from rf_dp_agents.model import DiffusionPolicy, make_scheduler
from rf_dp_agents.model.step_fused import FusedStepScheduler

CASES = %r


def gap(a, b):
    return ((a.double() - b.double()).abs().max() / b.double().abs().max().clamp_min(1e-6)).item()


results = {"steps": {}}
for i, case in enumerate(json.loads(CASES)):
    sampler = case.pop("sampler")
    config = tiny_model_config(num_train_timesteps=100, **case)
    worst = 0.0
    for steps in (1, 10, 100):
        for batch, rows in ((1, False), (3, False), (3, True)):
            plain, fused = make_scheduler(config, sampler), FusedStepScheduler(make_scheduler(config, sampler))
            plain.set_timesteps(steps)
            fused.set_timesteps(steps)
            assert torch.equal(plain.timesteps, fused.timesteps)
            seeds = [7 + r for r in range(batch)]
            gens = lambda: ([torch.Generator().manual_seed(s) for s in seeds] if rows
                            else torch.Generator().manual_seed(seeds[0]))
            g_plain, g_fused = gens(), gens()
            data = torch.Generator().manual_seed(steps * 10 + batch)
            a = b = 3 * torch.randn(batch, 16, 4, generator=data)
            for t in plain.timesteps:
                out = 2 * torch.randn(batch, 16, 4, generator=data)
                a = plain.step(out, t, a, generator=g_plain).prev_sample
                b = fused.step(out, t, b, generator=g_fused).prev_sample
                worst = max(worst, gap(b, a))
    results["steps"][f"{sampler}-{case}"] = worst

# the denoising loop a sampling graph runs, with the fused update and with the scheduler's (test_unet_fused checks
# the fused U-Net)
torch.manual_seed(0)
for sampler in ("ddpm", "ddim"):
    policy = DiffusionPolicy(tiny_model_config(sampler=sampler)).eval()
    cfg = policy.config
    obs = {"img": torch.randint(0, 256, (2, cfg.obs_horizon, *cfg.image_shape), dtype=torch.uint8),
           "state": torch.randn(2, cfg.obs_horizon, cfg.state_dim)}
    with torch.no_grad():
        cond = policy.encode_obs(obs)
    noise = torch.randn(2, policy.config.pred_horizon, policy.config.action_dim)
    runs = []
    for fused in (False, True):
        scheduler = make_scheduler(policy.config, sampler)
        scheduler.set_timesteps(policy.config.num_inference_steps)
        timesteps = scheduler.timesteps
        with torch.no_grad():
            runs.append(policy.denoise(cond, noise, FusedStepScheduler(scheduler) if fused else scheduler, timesteps,
                                       generator=torch.Generator().manual_seed(3)))
    results[f"denoise-{sampler}"] = gap(runs[1], runs[0])
print(json.dumps(results))
"""


def test_the_fused_update_runs_each_step_as_the_scheduler_does() -> None:
    """Step by step (1, 10 and 100 steps; batch 1 and 3; one generator or one per row) and over the policy's whole
    denoising loop, the kernel's samples equal the scheduler's to float32 rounding: DDPM's noise is the same draw."""
    results = run_interpreted(SCRIPT % json.dumps(CASES))
    assert len(results["steps"]) == len(CASES) == 8 * len(BETA_SCHEDULES)
    for name, worst in results["steps"].items():
        assert worst <= 1e-5, (name, worst)
    for sampler in ("ddpm", "ddim"):
        assert results[f"denoise-{sampler}"] <= 1e-4, results


def test_only_ddpm_and_ddim_fuse_and_bad_input_is_named() -> None:
    config = tiny_model_config(num_train_timesteps=100)
    assert fuses_step(make_scheduler(config, "ddpm")) and fuses_step(make_scheduler(config, "ddim"))
    dpm = make_scheduler(config, "dpmsolver")
    assert not fuses_step(dpm)
    with pytest.raises(TypeError, match="no fused update for DPMSolverMultistepScheduler"):
        FusedStepScheduler(dpm)
    with pytest.raises(ValueError, match="call set_timesteps before step"):
        step_coefficients(make_scheduler(config, "ddim"), 50)
    ddpm = make_scheduler(config, "ddpm")
    ddpm.set_timesteps(10)
    co = step_coefficients(ddpm, ddpm.timesteps[0])
    with pytest.raises(ValueError, match=r"of one shape, got \(2, 3\), \(2, 4\) and None"):
        fused_update(torch.zeros(2, 3), torch.zeros(2, 4), co)
    with pytest.raises(ValueError, match="this step adds noise"):
        fused_update(torch.zeros(2, 3), torch.zeros(2, 3), co)
