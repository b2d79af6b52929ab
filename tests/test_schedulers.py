"""rf_dp_agents.model.schedulers against diffusers (the reference it replaces, a test dependency only).

Every comparison is bit for bit: the samplers, the initial noise and the learning-rate schedules do the same
float32 operations in the same order as diffusers 0.42 in the configuration the project used.
"""

from __future__ import annotations

import diffusers
import pytest
import torch
from diffusers.optimization import get_constant_schedule_with_warmup, get_cosine_schedule_with_warmup
from diffusers.utils.torch_utils import randn_tensor as reference_randn

from rf_dp_agents.config import tiny_model_config
from rf_dp_agents.model import make_scheduler
from rf_dp_agents.model.schedulers import (
    BETA_SCHEDULES,
    DDIMScheduler,
    DDPMScheduler,
    DPMSolverMultistepScheduler,
    constant_schedule_with_warmup,
    cosine_schedule_with_warmup,
    randn_tensor,
)


SAMPLERS = ("ddpm", "ddim", "dpmsolver")
SHAPE = (16, 4)  # pred_horizon x action_dim of one sample
CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


def reference(sampler: str, num_train_timesteps: int, beta_schedule: str, prediction_type: str, clip: bool):
    """The diffusers scheduler the project's make_scheduler built before it had its own."""
    common = dict(num_train_timesteps=num_train_timesteps, beta_schedule=beta_schedule, prediction_type=prediction_type)
    if sampler == "ddpm":
        return diffusers.DDPMScheduler(clip_sample=clip, **common)
    if sampler == "ddim":
        return diffusers.DDIMScheduler(clip_sample=clip, set_alpha_to_one=True, steps_offset=0, **common)
    return diffusers.DPMSolverMultistepScheduler(
        algorithm_type="dpmsolver++", solver_order=2, thresholding=clip, sample_max_value=1.0, **common
    )


def same(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Bit-equal values and dtype, NaN where the other has NaN."""
    return a.dtype == b.dtype and torch.equal(a.isnan(), b.isnan()) and torch.equal(a.nan_to_num(), b.nan_to_num())


def generators(kind: str, batch: int, device: str = "cpu") -> torch.Generator | list[torch.Generator]:
    if kind == "one":
        return torch.Generator(device).manual_seed(7)
    return [torch.Generator(device).manual_seed(100 + row) for row in range(batch)]


def run_both(ours, ref, steps: int, batch: int, gen_kind: str, device: str = "cpu", gen_device: str = "cpu") -> None:
    """Two sampling loops (set_timesteps resets the multistep state) on the same random model outputs."""
    data = torch.Generator().manual_seed(steps * 10 + batch)
    for _ in range(2):
        ours.set_timesteps(steps)
        ref.set_timesteps(steps)
        assert ours.timesteps.dtype == torch.int64 and ours.timesteps.device.type == "cpu"
        assert torch.equal(ours.timesteps, ref.timesteps) and ours.init_noise_sigma == ref.init_noise_sigma
        x_ours = x_ref = (3 * torch.randn(batch, *SHAPE, generator=data)).to(device)
        g_ours, g_ref = generators(gen_kind, batch, gen_device), generators(gen_kind, batch, gen_device)
        for t in ours.timesteps:
            out = (2 * torch.randn(batch, *SHAPE, generator=data)).to(device)
            x_ours = ours.step(out, t, x_ours, generator=g_ours).prev_sample
            x_ref = ref.step(out, t, x_ref, generator=g_ref).prev_sample
            assert same(x_ours, x_ref), f"step at t={int(t)} differs by {(x_ours - x_ref).abs().max()}"


@pytest.mark.parametrize("steps", [1, 2, 10, 16, 100])
@pytest.mark.parametrize("clip", [True, False])
@pytest.mark.parametrize("prediction_type", ["epsilon", "sample"])
@pytest.mark.parametrize("sampler", SAMPLERS)
def test_sampling_loop_matches_diffusers(sampler: str, prediction_type: str, clip: bool, steps: int):
    """timesteps and every step's sample equal diffusers' for one generator or one per row. DPM-Solver++ at 100
    of 100 training steps is refused: diffusers' "linspace" rounding repeats timestep 50 there, a step of size 0
    that gives NaN."""
    if sampler == "dpmsolver" and steps == 100:
        with pytest.raises(ValueError, match=r"below num_train_timesteps \(100\), got 100"):
            make_scheduler(tiny_model_config(num_train_timesteps=100), sampler).set_timesteps(steps)
        return
    for beta_schedule in BETA_SCHEDULES:
        config = tiny_model_config(
            num_train_timesteps=100, beta_schedule=beta_schedule, prediction_type=prediction_type, clip_sample=clip
        )
        for batch, gen_kind in ((1, "one"), (3, "one"), (1, "rows"), (3, "rows")):
            ours = make_scheduler(config, sampler)
            ref = reference(sampler, 100, beta_schedule, prediction_type, clip)
            run_both(ours, ref, steps, batch, gen_kind)


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_default_schedule_with_1000_training_steps_matches_diffusers(sampler: str):
    """The classes' defaults (1000 linear-beta timesteps, epsilon, clipping) are diffusers' defaults."""
    cls = {"ddpm": DDPMScheduler, "ddim": DDIMScheduler, "dpmsolver": DPMSolverMultistepScheduler}[sampler]
    for steps in (1, 16, 100):
        run_both(cls(), reference(sampler, 1000, "linear", "epsilon", True), steps, 3, "rows")


@CUDA
@pytest.mark.parametrize("gen_device", ["cpu", "cuda"])
@pytest.mark.parametrize("sampler", SAMPLERS)
def test_sampling_loop_on_cuda_matches_diffusers(sampler: str, gen_device: str):
    """On CUDA, with CPU generators (noise drawn on the CPU, then moved) or CUDA ones."""
    config = tiny_model_config(num_train_timesteps=100)
    for gen_kind in ("one", "rows"):
        ours, ref = make_scheduler(config, sampler), reference(sampler, 100, config.beta_schedule, "epsilon", True)
        run_both(ours, ref, 10, 3, gen_kind, device="cuda", gen_device=gen_device)


@pytest.mark.parametrize("sampler", ["ddpm", "ddim"])
@pytest.mark.parametrize("beta_schedule", BETA_SCHEDULES)
def test_add_noise_matches_diffusers(sampler: str, beta_schedule: str):
    config = tiny_model_config(num_train_timesteps=100, beta_schedule=beta_schedule)
    ours, ref = make_scheduler(config, sampler), reference(sampler, 100, beta_schedule, "epsilon", True)
    g = torch.Generator().manual_seed(3)
    for shape, dtype in (((5, *SHAPE), torch.float32), ((5, 4), torch.float32), ((5, *SHAPE), torch.float64)):
        x, noise = torch.randn(shape, generator=g, dtype=dtype), torch.randn(shape, generator=g, dtype=dtype)
        t = torch.randint(0, 100, (5,), generator=g)
        assert same(ours.add_noise(x, noise, t), ref.add_noise(x, noise, t))
    assert torch.equal(ours.alphas_cumprod, ref.alphas_cumprod)


def test_unknown_names_are_rejected():
    with pytest.raises(ValueError, match="linear, scaled_linear, squaredcos_cap_v2"):
        DDPMScheduler(beta_schedule="sigmoid")
    with pytest.raises(ValueError, match="epsilon, sample"):
        DPMSolverMultistepScheduler(prediction_type="v_prediction")
    with pytest.raises(ValueError, match=r"num_inference_steps must be in \[1, 100\]"):
        DDIMScheduler(num_train_timesteps=100).set_timesteps(101)


@pytest.mark.parametrize("device", [None, "cpu", pytest.param("cuda", marks=CUDA)])
def test_randn_tensor_matches_diffusers(device: str | None):
    shape = (3, *SHAPE)
    gen_devices = ["cpu"] if device in (None, "cpu") else ["cpu", "cuda"]
    for gen_device in gen_devices:
        for make in (
            lambda: torch.Generator(gen_device).manual_seed(1),
            lambda: [torch.Generator(gen_device).manual_seed(10 + i) for i in range(3)],
            lambda: [torch.Generator(gen_device).manual_seed(5)],
        ):
            for dtype in (None, torch.float64):
                mine = randn_tensor(shape, generator=make(), device=device, dtype=dtype)
                theirs = reference_randn(shape, generator=make(), device=device, dtype=dtype)
                assert same(mine, theirs) and mine.device == theirs.device
    torch.manual_seed(0)
    mine = randn_tensor(shape, device=device)
    torch.manual_seed(0)
    assert same(mine, reference_randn(shape, device=device))


@CUDA
def test_randn_tensor_refuses_a_cuda_generator_for_a_cpu_tensor():
    with pytest.raises(ValueError):
        randn_tensor((2, 3), generator=torch.Generator("cuda"), device="cpu")


@pytest.mark.parametrize("warmup", [0, 1, 10])
@pytest.mark.parametrize("total", [1, 10, 500])
def test_lr_schedules_match_diffusers(warmup: int, total: int):
    """Same multipliers at every step (past the end too), and state dicts that load into each other."""
    param = [torch.nn.Parameter(torch.zeros(1))]
    pairs = (
        (cosine_schedule_with_warmup, get_cosine_schedule_with_warmup, (warmup, total)),
        (constant_schedule_with_warmup, get_constant_schedule_with_warmup, (warmup,)),
    )
    for mine, theirs, args in pairs:
        ours, ref = mine(torch.optim.SGD(param, lr=0.1), *args), theirs(torch.optim.SGD(param, lr=0.1), *args)
        assert [ours.lr_lambdas[0](s) for s in range(total + 20)] == [ref.lr_lambdas[0](s) for s in range(total + 20)]
        for _ in range(min(total, 7)):
            ref.optimizer.step()
            ref.step()
        resumed = mine(torch.optim.SGD(param, lr=0.1), *args)
        resumed.load_state_dict(ref.state_dict())
        assert resumed.get_last_lr() == ref.get_last_lr()
        mine_state, ref_state = resumed.state_dict(), ref.state_dict()
        # our cosine factor is an object whose length LambdaLR's state carries (a schedule fitted to a budget)
        expected = [{"num_warmup_steps": warmup, "num_training_steps": total}] if mine is cosine_schedule_with_warmup \
            else [None]
        assert mine_state.pop("lr_lambdas") == expected and ref_state.pop("lr_lambdas") == [None]
        assert mine_state == ref_state
