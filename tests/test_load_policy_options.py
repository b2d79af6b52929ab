"""load_policy's inference arguments (sampler, steps, chunk execution, graph switches), their errors, warmup, the
sampling graphs' TF32 scope and the compile cache directory."""

from __future__ import annotations

import json
import os
import logging
from pathlib import Path

import numpy as np
import pytest
import torch

from rf_dp_agents import load_policy
from rf_dp_agents.model.graph_setup import (
    COMPILE_CACHE_ENV,
    INDUCTOR_CACHE_ENV,
    graph_build_message,
    tf32_scope,
    use_compile_cache,
)
from rf_dp_agents.rollout.config import RolloutConfig

HW = (24, 32)


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory: pytest.TempPathFactory, tiny_checkpoint) -> Path:
    return tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "agent", image_hw=HW, seed=2)


def _obs() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {"img": rng.integers(0, 256, (1, *HW, 3), dtype=np.uint8),
            "state": rng.normal(0.0, 0.1, (1, 8)).astype(np.float32)}


def _unet_calls(policy) -> list[int]:
    calls: list[int] = []
    policy.model.noise_pred_net.register_forward_hook(lambda *_: calls.append(1))
    return calls


def test_sampler_and_steps_are_used_and_the_checkpoint_is_left_alone(ckpt: Path) -> None:
    saved = json.loads((ckpt / "config.json").read_text())["model"]
    assert (saved["sampler"], saved["num_inference_steps"]) == ("ddpm", 10)
    policy = load_policy(ckpt, device="cpu", sampler="ddim", num_inference_steps=4)
    assert (policy.config.sampler, policy.config.num_inference_steps) == ("ddim", 4)
    calls = _unet_calls(policy)
    policy.predict(_obs())
    assert len(calls) == 4 and set(policy.model._samplers) == {"ddim"}
    plain = load_policy(ckpt, device="cpu")
    calls = _unet_calls(plain)
    plain.predict(_obs())
    assert len(calls) == 10 and plain.config.sampler == "ddpm"
    assert json.loads((ckpt / "config.json").read_text())["model"] == saved


@pytest.mark.parametrize("kwargs, message", [
    ({"sampler": "ddpn"}, r"unknown sampler 'ddpn'; choose one of ddpm, ddim, dpmsolver"),
    ({"num_inference_steps": 0}, r"num_inference_steps must be an int in \[1, 100\]"),
    ({"num_inference_steps": 101}, r"num_inference_steps must be an int in \[1, 100\] \(the num_train_timesteps"),
    ({"num_inference_steps": 10.0}, r"num_inference_steps must be an int"),
    ({"num_inference_steps": True}, r"num_inference_steps must be an int"),
    ({"execute_steps": 9}, r"execute_steps must be an int in \[1, 8\]"),
    ({"temporal_ensemble": float("nan")}, r"temporal_ensemble must be a finite number"),
    ({"compile_graphs": "yes"}, r"compile_graphs must be True, False or None"),
    ({"fused_graphs": 1}, r"fused_graphs must be True, False or None"),
])
def test_bad_arguments_name_the_checkpoint_and_the_range(ckpt: Path, kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message) as err:
        load_policy(ckpt, device="cpu", **kwargs)
    assert str(ckpt / "config.json") in str(err.value)


def test_chunk_execution_and_graph_switches_reach_the_policy(ckpt: Path) -> None:
    policy = load_policy(ckpt, device="cpu", execute_steps=6, temporal_ensemble=0.01, cuda_graphs=False,
                         compile_graphs=False, fused_graphs=False, bf16_graphs=True, graph_tf32=False)
    assert policy.chunk_execution == {"execute_steps": 6, "temporal_ensemble": 0.01}
    model = policy.model
    assert (model.cuda_graphs, model.compile_graphs, model.fused_graphs, model.bf16_graphs, model.graph_tf32) == (
        False, False, False, True, False)
    defaults = load_policy(ckpt, device="cpu").model
    assert (defaults.cuda_graphs, defaults.compile_graphs, defaults.fused_graphs, defaults.bf16_graphs,
            defaults.graph_tf32) == (True, True, True, False, True)  # on CUDA the fused U-Net kernels by default


def test_rollout_loads_its_options_through_load_policy(ckpt: Path) -> None:
    from rf_dp_agents.rollout.runner import load_agent_policies

    cfg = RolloutConfig(task="LiftBarrier-rf", device="cpu", sampler="ddim", num_inference_steps=5, execute_steps=6,
                        temporal_ensemble=0.5, compile_graphs=False, graph_tf32=False)
    policies = load_agent_policies(cfg, [ckpt, ckpt])
    assert [p.seed for p in policies] == [cfg.seed, cfg.seed + 1]
    for p in policies:
        assert (p.config.sampler, p.config.num_inference_steps) == ("ddim", 5)
        assert p.chunk_execution == {"execute_steps": 6, "temporal_ensemble": 0.5}
        assert (p.model.compile_graphs, p.model.graph_tf32) == (False, False)
    with pytest.raises(ValueError, match=r"agent 0 \(panda-0\): .*execute_steps must be an int in \[1, 8\]"):
        load_agent_policies(RolloutConfig(task="LiftBarrier-rf", device="cpu", execute_steps=9), [ckpt])
    with pytest.raises(ValueError, match="RolloutConfig.execute_steps must be a positive int"):
        RolloutConfig(task="LiftBarrier-rf", execute_steps=0)


def test_warmup_off_cuda_builds_nothing_and_logs_nothing(ckpt: Path, caplog: pytest.LogCaptureFixture) -> None:
    policy = load_policy(ckpt, device="cpu")
    with caplog.at_level(logging.INFO, logger="rf_dp_agents"):
        assert policy.warmup((1, 2)) == []
        policy.predict(_obs())
    assert not caplog.records
    for bad in ((), (0,), (1.5,), (True,)):
        with pytest.raises(ValueError, match="warmup batch_sizes must be positive ints"):
            policy.warmup(bad)


def test_graph_build_message_says_what_and_how_long() -> None:
    assert graph_build_message([1], True) == (
        "compiling the sampling graph for batch 1 (10-20 s on first use, less with a warm compile cache)...")
    assert graph_build_message([1, 2, 4], True).startswith("compiling the sampling graphs for batches 1, 2, 4 (10-20 s each")
    assert graph_build_message([8], False) == "capturing the sampling graph for batch 8..."
    assert graph_build_message([1], False, fused=True) == (
        "capturing the sampling graph for batch 1 with the fused U-Net kernels (Triton compiles them on first use and "
        "keeps them in its cache)...")


def _flags() -> tuple:
    m, c = torch.backends.cuda.matmul, torch.backends.cudnn
    return (torch.get_float32_matmul_precision(), m.allow_tf32, c.allow_tf32,
            getattr(m, "fp32_precision", None), getattr(c.conv, "fp32_precision", None))


@pytest.mark.parametrize("user", ["default", "medium", "cudnn_off"])
def test_tf32_scope_allows_tf32_inside_and_restores_the_users_flags(user: str) -> None:
    before_test = _flags()
    try:
        if user == "medium":
            torch.set_float32_matmul_precision("medium")
        if user == "cudnn_off":
            torch.backends.cudnn.allow_tf32 = False
        before = _flags()
        with tf32_scope(True):
            inside = _flags()
        assert _flags() == before
        assert inside[:3] == ("high", True, True)
        with tf32_scope(False):
            assert _flags() == before
        with pytest.raises(RuntimeError, match="boom"), tf32_scope(True):
            raise RuntimeError("boom")
        assert _flags() == before
    finally:
        torch.set_float32_matmul_precision(before_test[0])
        torch.backends.cudnn.allow_tf32 = before_test[2]
        if before_test[3] is not None:  # the legacy setters also write the new attributes
            torch.backends.cuda.matmul.fp32_precision, torch.backends.cudnn.conv.fp32_precision = before_test[3:]
    assert _flags() == before_test


def test_predict_with_graphs_requested_leaves_the_global_flags(ckpt: Path) -> None:
    before = _flags()
    policy = load_policy(ckpt, device="cpu", cuda_graphs=True, graph_tf32=True)
    policy.warmup((1,))
    policy.predict(_obs())
    assert _flags() == before


def test_compile_cache_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(INDUCTOR_CACHE_ENV, raising=False)
    monkeypatch.delenv(COMPILE_CACHE_ENV, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert use_compile_cache(False) is None and INDUCTOR_CACHE_ENV not in os.environ
    monkeypatch.setenv(COMPILE_CACHE_ENV, "off")
    assert use_compile_cache() is None
    monkeypatch.delenv(COMPILE_CACHE_ENV)
    want = (tmp_path / "xdg" / "rf_dp_agents" / "torchinductor").resolve()
    assert use_compile_cache() == want and want.is_dir()
    assert os.environ[INDUCTOR_CACHE_ENV] == str(want)
    # a directory already chosen (by the user, or by an earlier call) wins
    assert use_compile_cache(tmp_path / "other") == want
    monkeypatch.delenv(INDUCTOR_CACHE_ENV)
    assert use_compile_cache(tmp_path / "other") == (tmp_path / "other").resolve()
    monkeypatch.delenv(INDUCTOR_CACHE_ENV)
    monkeypatch.setenv(COMPILE_CACHE_ENV, str(tmp_path / "mine"))
    assert use_compile_cache(True) == (tmp_path / "mine").resolve()
    # torch writes its own default into the environment when parts of it are imported: that is not a choice
    from torch._inductor.runtime.cache_dir_utils import default_cache_dir

    monkeypatch.setenv(INDUCTOR_CACHE_ENV, default_cache_dir())
    assert use_compile_cache(True) == (tmp_path / "mine").resolve()
