"""The Diffusion Policy network: U-Net, GroupNorm ResNet18, cropping, loss, sampling, input checks."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from rf_dp_agents.config import ModelConfig, tiny_model_config
from rf_dp_agents.data.normalizer import Normalizer
from rf_dp_agents.model import ConditionalUnet1D, DiffusionPolicy, ResNet18Encoder, crop_images, make_scheduler

SIZE = 32


def small_config(**overrides) -> ModelConfig:
    return tiny_model_config(image_shape=(3, SIZE, SIZE), **overrides)


def make_batch(config: ModelConfig, batch: int = 4, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    to, (c, h, w) = config.obs_horizon, config.image_shape
    out = {k: torch.randint(0, 256, (batch, to, c, h, w), dtype=torch.uint8, generator=g) for k in config.camera_keys}
    out[config.state_key] = torch.randn(batch, to, config.state_dim, generator=g)
    out["action"] = torch.randn(batch, config.pred_horizon, config.action_dim, generator=g)
    return out


def obs_of(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v for k, v in batch.items() if k != "action"}


def test_unet_shape_and_film_conditioning():
    torch.manual_seed(0)
    net = ConditionalUnet1D(input_dim=8, global_cond_dim=10, diffusion_step_embed_dim=32, down_dims=(32, 64, 128))
    x = torch.randn(3, 16, 8)
    cond = torch.randn(3, 10)
    out = net(x, torch.tensor([0, 5, 99]), cond)
    assert out.shape == (3, 16, 8)
    assert not torch.allclose(out, net(x, torch.tensor([0, 5, 99]), cond + 1.0)), "global condition has no effect"
    assert not torch.allclose(out, net(x, 50, cond)), "diffusion step has no effect"
    films = [m for m in net.modules() if type(m).__name__ == "ConditionalResidualBlock1D"]
    assert len(films) == 2 * 3 + 2 + 2 * 2


def test_encoder_is_groupnorm_resnet18_without_fc():
    enc = ResNet18Encoder()
    assert not any(isinstance(m, nn.BatchNorm2d) for m in enc.modules())
    norms = [m for m in enc.modules() if isinstance(m, nn.GroupNorm)]
    assert norms and all(m.num_groups == m.num_channels // 16 for m in norms)
    assert isinstance(enc.backbone.fc, nn.Identity)
    feats = enc(torch.randint(0, 256, (2, 3, SIZE, SIZE), dtype=torch.uint8))
    assert feats.shape == (2, 512) and torch.isfinite(feats).all()


def test_preprocess_maps_uint8_to_unit_range():
    enc = ResNet18Encoder()
    px = torch.tensor([0, 255, 51], dtype=torch.uint8).view(1, 3, 1, 1)
    assert torch.allclose(enc.preprocess(px).flatten(), torch.tensor([-1.0, 1.0, -0.6]))


def test_crop_random_windows_and_centre():
    h, w = 12, 10
    images = torch.arange(h * w, dtype=torch.int64).view(1, 1, h, w).repeat(64, 2, 1, 1)
    crops = crop_images(images, (5, 4), random=True)
    assert crops.shape == (64, 2, 5, 4)
    tops, lefts = crops[:, 0, 0, 0] // w, crops[:, 0, 0, 0] % w
    for img, top, left in zip(crops, tops.tolist(), lefts.tolist()):
        assert 0 <= top <= h - 5 and 0 <= left <= w - 4
        assert torch.equal(img, images[0, :, top : top + 5, left : left + 4])
    assert len(set(zip(tops.tolist(), lefts.tolist()))) > 1, "random crop always picked the same window"
    centre = crop_images(images[:2], (5, 4), random=False)
    assert torch.equal(centre, images[:2, :, 3:8, 3:7])


def test_encoder_crops_randomly_in_training_and_centrally_in_eval():
    config = small_config(crop_shape=(24, 24))
    model = DiffusionPolicy(config)
    images = torch.arange(SIZE * SIZE).view(1, 1, SIZE, SIZE).expand(8, 3, SIZE, SIZE).to(torch.uint8)
    enc = model.encoders[0]
    enc.eval()
    centre = images[:, :, 4:28, 4:28].float() * (2.0 / 255.0) - 1.0  # (32 - 24) / 2 = 4 pixels off each side
    assert torch.equal(enc.preprocess(images), centre)
    enc.train()
    torch.manual_seed(0)
    first, second = enc.preprocess(images), enc.preprocess(images)
    assert first.shape == (8, 3, 24, 24) and not torch.equal(first, second)


def test_compute_loss_is_finite_and_backpropagates():
    config = small_config()
    model = DiffusionPolicy(config)
    loss = model.compute_loss(make_batch(config))
    assert loss.ndim == 0 and torch.isfinite(loss)
    loss.backward()
    assert model.encoders[0].backbone.conv1.weight.grad is not None
    assert model.noise_pred_net.final_conv[1].weight.grad.abs().sum() > 0


@pytest.fixture
def one_thread():
    """Tiny CPU models run faster on one intra-op thread, and do not thrash when other tests share the cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.slow
def test_loss_falls_on_tiny_synthetic_task(one_thread):
    """Two modes told apart by the image: a rising or a falling ramp of joint targets."""
    torch.manual_seed(0)
    config = small_config(down_dims=(32, 64), diffusion_step_embed_dim=32)
    g = torch.Generator().manual_seed(0)

    def batch(size: int = 8) -> dict[str, torch.Tensor]:
        mode = torch.randint(0, 2, (size,), generator=g)
        img = (mode * 200 + 20).view(size, 1, 1, 1, 1).expand(size, 2, 3, SIZE, SIZE).to(torch.uint8)
        ramp = torch.linspace(-1, 1, 16).view(1, 16, 1).expand(size, 16, 8)
        action = ramp * (mode.float() * 2 - 1).view(size, 1, 1) + 0.5
        return {"img": img, "state": 0.1 * torch.randn(size, 2, 8, generator=g), "action": action}

    sample = batch(64)
    model = DiffusionPolicy(config, Normalizer.fit({"state": sample["state"], "action": sample["action"]}))
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3)
    losses = []
    for _ in range(150):
        loss = model.compute_loss(batch())
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    first, last = sum(losses[:25]) / 25, sum(losses[-25:]) / 25
    assert all(torch.isfinite(torch.tensor(losses)))
    assert last < 0.65 * first, f"loss did not fall: first 25 steps {first:.3f}, last 25 {last:.3f}"


@pytest.mark.parametrize("sampler", ["ddpm", "ddim", "dpmsolver"])
def test_predict_action_shape_and_generator_determinism(sampler):
    config = small_config(sampler=sampler, num_inference_steps=4)
    model = DiffusionPolicy(config).eval()
    obs = obs_of(make_batch(config, batch=3))
    a = model.predict_action(obs, generator=torch.Generator().manual_seed(7))
    b = model.predict_action(obs, generator=torch.Generator().manual_seed(7))
    c = model.predict_action(obs, generator=torch.Generator().manual_seed(8))
    assert a.shape == (3, config.pred_horizon, config.action_dim)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_per_row_generators_make_rows_independent_of_the_batch():
    config = small_config(sampler="ddpm", num_inference_steps=3)
    model = DiffusionPolicy(config).eval()
    obs = obs_of(make_batch(config, batch=3))
    gens = lambda n: [torch.Generator().manual_seed(1) for _ in range(n)]  # noqa: E731
    full = model.predict_action(obs, generator=gens(3))
    last = model.predict_action({k: v[2:] for k, v in obs.items()}, generator=gens(1))
    assert torch.allclose(full[2:], last, atol=1e-5)
    with pytest.raises(ValueError, match="2 generators for a batch of 3"):
        model.predict_action(obs, generator=gens(2))


def test_film_tables_give_each_steps_conditioning():
    torch.manual_seed(0)
    net = ConditionalUnet1D(input_dim=4, global_cond_dim=6, diffusion_step_embed_dim=16, down_dims=(16, 32)).eval()
    x, cond, steps = torch.randn(2, 8, 4), torch.randn(2, 6), torch.tensor([90, 40, 3])
    with torch.no_grad():
        tables = net.film_tables(steps, cond)
        assert len(tables) == net.num_residual_blocks == len(net.residual_blocks())
        assert [t.shape[:2] for t in tables] == [(3, 2)] * len(tables)
        for i in range(3):
            want = net(x, steps[i], cond)
            torch.testing.assert_close(net(x, steps[i], cond, film=[t[i] for t in tables]), want, rtol=1e-5, atol=1e-5)
            assert not torch.allclose(net(x, steps[i], cond, film=[t[(i + 1) % 3] for t in tables]), want)
        with pytest.raises(ValueError, match=f"one tensor per residual block \\({len(tables)}\\), got 1"):
            net(x, steps[0], cond, film=tables[:1])


def test_unet_traces_as_one_graph_for_torch_compile():
    """The sampling graphs compile the U-Net; with or without FiLM tables it traces without a graph break."""
    torch.manual_seed(0)
    net = ConditionalUnet1D(input_dim=4, global_cond_dim=6, diffusion_step_embed_dim=16, down_dims=(16, 32)).eval()
    traced = torch.compile(net, backend="eager", fullgraph=True)
    x, cond, steps = torch.randn(2, 8, 4), torch.randn(2, 6), torch.tensor([9, 3])
    with torch.no_grad():
        tables = net.film_tables(steps, cond)
        for i in range(2):
            want = net(x, steps[i], cond)
            torch.testing.assert_close(traced(x, steps[i], cond), want)
            tabled = traced(x, steps[i], cond, film=[t[i] for t in tables])
            torch.testing.assert_close(tabled, want, rtol=1e-5, atol=1e-5)


def test_bf16_unet_follows_the_float32_weights():
    """The bf16 copy the sampling graphs run (bf16_graphs): float32 in and out, near the float32 U-Net with or
    without FiLM tables, fresh weights after refresh(), no new entries in the policy's state dict."""
    from rf_dp_agents.model.graphed import Bf16Unet

    torch.manual_seed(0)
    net = ConditionalUnet1D(input_dim=4, global_cond_dim=6, diffusion_step_embed_dim=16, down_dims=(16, 32)).eval()
    bf16 = Bf16Unet(net)
    assert {p.dtype for p in bf16.bf16_net.parameters()} == {torch.bfloat16}
    x, cond, steps = torch.randn(2, 8, 4), torch.randn(2, 6), torch.tensor([9, 3])
    with torch.no_grad():
        want = net(x, steps[0], cond)
        got = bf16(x, steps[0], cond)
        tabled = bf16(x, steps[0], cond, film=[t[0] for t in net.film_tables(steps, cond)])
        assert got.dtype == tabled.dtype == torch.float32
        scale = want.abs().max().item()
        for out in (got, tabled):
            gap = (out - want).abs().max().item()
            assert 0 < gap <= 0.05 * scale  # bf16 rounding: close, not equal
        for p in net.parameters():
            p.mul_(1.5)
        moved = net(x, steps[0], cond)
        stale = bf16(x, steps[0], cond)
        bf16.refresh()
        fresh = bf16(x, steps[0], cond)
    assert (stale - moved).abs().max() > 0.1 * moved.abs().max()
    assert (fresh - moved).abs().max() <= 0.05 * moved.abs().max()
    model = DiffusionPolicy(small_config())
    keys = set(model.state_dict())
    model.bf16_graphs = True
    model._bf16_unets[torch.device("cpu"), False] = Bf16Unet(model.noise_pred_net)
    assert set(model.state_dict()) == keys


def test_compiled_unet_keeps_one_compilation_per_batch_size_past_eight():
    """Sampling graphs compile the U-Net once per batch size (static shapes; a 16-env rollout pads to five sizes
    per agent, bf16 graphs add their own). With the raised recompile limit ten batch sizes (past Dynamo's
    default of 8) are all traced, none left to run uncompiled."""
    import torch._dynamo as dynamo
    from torch._dynamo.utils import counters

    from rf_dp_agents.model.graphed import COMPILED_UNETS, raise_recompile_limit

    name = "recompile_limit" if hasattr(dynamo.config, "recompile_limit") else "cache_size_limit"
    before = getattr(dynamo.config, name)
    dynamo.reset()
    counters.clear()
    try:
        assert raise_recompile_limit() == max(before, COMPILED_UNETS) >= 10
        assert raise_recompile_limit(2) == max(before, COMPILED_UNETS)  # never lowered
        torch.manual_seed(0)
        net = ConditionalUnet1D(input_dim=4, global_cond_dim=6, diffusion_step_embed_dim=16, down_dims=(8, 16)).eval()
        compiled = torch.compile(net, backend="eager", dynamic=False)
        for batch in range(1, 11):
            x, cond = torch.randn(batch, 8, 4), torch.randn(batch, 6)
            with torch.no_grad():
                torch.testing.assert_close(compiled(x, torch.tensor(3), cond), net(x, torch.tensor(3), cond))
        assert counters["stats"]["unique_graphs"] == 10
    finally:
        setattr(dynamo.config, name, before)
        dynamo.reset()


@pytest.mark.parametrize("sampler", ["ddpm", "ddim"])
def test_denoise_with_and_without_film_tables(sampler: str):
    config = small_config(sampler=sampler, num_inference_steps=5)
    model = DiffusionPolicy(config).eval()
    obs = obs_of(make_batch(config, batch=3))
    scheduler = make_scheduler(config, sampler)
    scheduler.set_timesteps(5)
    noise = torch.randn(3, config.pred_horizon, config.action_dim, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        cond = model.encode_obs(obs)
        tabled = model.denoise(cond, noise, scheduler, scheduler.timesteps, torch.Generator().manual_seed(1))
        model.film_tables = False
        per_step = model.denoise(cond, noise, scheduler, scheduler.timesteps, torch.Generator().manual_seed(1))
    torch.testing.assert_close(tabled, per_step, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("sampler", ["ddpm", "ddim"])
def test_denoise_runs_the_given_net_once_per_step(sampler: str):
    """Four steps of either sampler are four U-Net calls on a subset of the 100 training timesteps (DDPM with
    fewer steps than it was trained with is the fast stochastic sampler)."""
    config = small_config(sampler=sampler, num_inference_steps=4)
    model = DiffusionPolicy(config).eval()
    obs = obs_of(make_batch(config, batch=2))
    calls = []

    def wrapped(sample, t, cond, film=None):
        calls.append(int(t))
        return model.noise_pred_net(sample, t, cond, film=film)

    scheduler = make_scheduler(config, sampler)
    scheduler.set_timesteps(4)
    noise = torch.randn(2, config.pred_horizon, config.action_dim, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        cond = model.encode_obs(obs)
        seeded = lambda: torch.Generator().manual_seed(1)  # noqa: E731  (DDPM draws noise at every step)
        via_wrapper = model.denoise(cond, noise, scheduler, scheduler.timesteps, seeded(), net=wrapped)
        direct = model.denoise(cond, noise, scheduler, scheduler.timesteps, seeded())
    assert calls == [int(t) for t in scheduler.timesteps] and len(calls) == 4
    assert calls == sorted(calls, reverse=True) and calls[0] >= config.num_train_timesteps // 2
    assert torch.equal(via_wrapper, direct)


def test_denoise_casts_the_film_tables_once_for_a_bf16_unet():
    """A Bf16Unet's FiLM rows arrive in bf16 (the tables cast once before the loop, not per block and step) and
    the sample equals the one from float32 rows cast inside the net: the same rounding, done once."""
    from rf_dp_agents.model.graphed import Bf16Unet

    config = small_config(sampler="ddpm", num_inference_steps=4)
    model = DiffusionPolicy(config).eval()
    obs = obs_of(make_batch(config, batch=2))
    scheduler = make_scheduler(config, "ddpm")
    scheduler.set_timesteps(4)
    noise = torch.randn(2, config.pred_horizon, config.action_dim, generator=torch.Generator().manual_seed(0))
    bf16 = Bf16Unet(model.noise_pred_net)
    seen: list[set[torch.dtype]] = []

    def spy(sample, t, cond, film=None):
        seen.append({f.dtype for f in film})
        return bf16(sample, t, cond, film=film)

    spy.film_dtype = bf16.film_dtype  # what denoise reads off the net it is given
    with torch.no_grad():
        cond = model.encode_obs(obs)
        once = model.denoise(cond, noise, scheduler, scheduler.timesteps, torch.Generator().manual_seed(1), net=spy)
        assert seen == [{torch.bfloat16}] * 4
        per_step = model.denoise(cond, noise, scheduler, scheduler.timesteps, torch.Generator().manual_seed(1),
                                 net=lambda sample, t, c, film=None: bf16(sample, t, c, film=film))
    assert torch.equal(once, per_step)


@pytest.mark.parametrize("sampler", ["ddpm", "ddim", "dpmsolver"])
def test_predict_action_clips_unnormalizes_and_respects_step_override(sampler):
    config = small_config(sampler=sampler, num_inference_steps=4)
    norm = Normalizer.fit({"state": torch.randn(50, 8), "action": 100.0 + 5.0 * torch.rand(50, 8)})
    model = DiffusionPolicy(config, norm).eval()
    obs = obs_of(make_batch(config, batch=2))
    actions = model.predict_action(obs, num_inference_steps=2)
    # an untrained net predicts wild clean samples; clipping keeps them in [-1, 1] (normalised), so raw
    # actions stay within the range the normalizer was fitted on
    assert actions.min() >= 100.0 - 1e-3 and actions.max() <= 105.0 + 1e-3
    with pytest.raises(ValueError, match="num_inference_steps"):
        model.predict_action(obs, num_inference_steps=config.num_train_timesteps + 1)


def test_multiple_cameras_with_separate_encoders():
    config = small_config(camera_keys=("head", "wrist"), share_encoder=False)
    model = DiffusionPolicy(config)
    assert len(model.encoders) == 2
    assert model.global_cond_dim == 2 * (2 * 512 + 8)
    batch = make_batch(config, batch=2)
    assert torch.isfinite(model.compute_loss(batch))
    model.eval()
    assert model.predict_action(obs_of(batch)).shape == (2, 16, 8)


def test_forward_and_predict_do_not_mutate_inputs():
    config = small_config(crop_shape=(28, 28))
    model = DiffusionPolicy(config)
    batch = make_batch(config, batch=2)
    before = {k: v.clone() for k, v in batch.items()}
    model.compute_loss(batch)
    model.eval()
    model.predict_action(obs_of(batch))
    for key, value in batch.items():
        assert torch.equal(value, before[key]), key


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("img", None, r"missing keys \['img'\]"),
        ("img", torch.zeros(2, 2, 3, SIZE, SIZE), "'img'.*uint8"),
        (
            "img",
            torch.zeros((2, 2, SIZE, SIZE, 3), dtype=torch.uint8),
            r"'img'.*\(2, 2, 3, 32, 32\).*got \(2, 2, 32, 32, 3\)",
        ),
        ("state", torch.zeros(2, 2, 7), r"'state'.*\(B, 2, 8\).*got \(2, 2, 7\)"),
        ("state", torch.zeros(2, 3, 8), r"'state'.*\(B, 2, 8\).*got \(2, 3, 8\)"),
        ("action", torch.zeros(2, 8, 8), r"'action'.*\(2, 16, 8\).*got \(2, 8, 8\)"),
        ("action", None, r"missing key 'action'"),
        ("state", [[0.0] * 8] * 2, "'state'.*torch.Tensor"),
    ],
)
def test_bad_batches_raise_clear_errors(key, value, message):
    config = small_config()
    model = DiffusionPolicy(config)
    batch = make_batch(config, batch=2)
    if value is None:
        del batch[key]
    else:
        batch[key] = value
    with pytest.raises((ValueError, KeyError, TypeError), match=message):
        model.compute_loss(batch)


def test_config_and_normalizer_validation():
    with pytest.raises(ValueError, match="divisible"):
        tiny_model_config(pred_horizon=12, down_dims=(32, 64, 128))
    with pytest.raises(ValueError, match="obs_horizon \\+ action_horizon"):
        tiny_model_config(obs_horizon=4, action_horizon=16)
    with pytest.raises(ValueError, match="crop_shape"):
        tiny_model_config(crop_shape=(80, 80))
    for sampler in ("ddpm", "ddim", "dpmsolver"):
        with pytest.raises(ValueError, match="exceeds num_train_timesteps"):
            tiny_model_config(sampler=sampler, num_inference_steps=101)
    with pytest.raises(ValueError, match="camera_keys"):
        tiny_model_config(camera_keys=())
    with pytest.raises(ValueError, match="unknown ModelConfig keys"):
        ModelConfig.from_dict({**tiny_model_config().to_dict(), "bogus": 1})
    with pytest.raises(ValueError, match="'action' has dimension 7"):
        DiffusionPolicy(small_config(), Normalizer({"state": 8, "action": 7}))
    with pytest.raises(ValueError, match="normalizer needs keys"):
        DiffusionPolicy(small_config(), Normalizer({"qpos": 8, "action": 8}))
    with pytest.raises(TypeError, match="ModelConfig"):
        DiffusionPolicy({"action_dim": 8})  # type: ignore[arg-type]
