"""Chunk execution options of the policy object: the first k actions of each chunk, ACT's temporal ensembling.

Queue semantics are checked against a stand-in model whose chunks are known numbers (a pure unit test of the
queue); the shared-inference path runs a real tiny checkpoint through a real InferenceServer.
"""

from __future__ import annotations

import math
import multiprocessing
from pathlib import Path

import numpy as np
import pytest
import torch

from rf_dp_agents import load_policy
from rf_dp_agents.config import tiny_model_config
from rf_dp_agents.policy import DiffusionPolicyAgent
from rf_dp_agents.rollout.client import InferenceClient, RemoteModel, claim_slot
from rf_dp_agents.rollout.inference import InferenceServer

TO, TA = 2, 8
SIZE = 8


class ChunkModel:
    """A stand-in model: call c returns chunks whose executable action j of env row r is c*1000 + r*100 + j
    (every action dimension), so each executed action names the call and position it came from. It records the
    state history it was given at each call."""

    training = False

    def __init__(self) -> None:
        self.config = tiny_model_config(image_shape=(3, SIZE, SIZE), obs_horizon=TO, action_horizon=TA)
        self.calls: list[torch.Tensor] = []

    @property
    def device(self) -> torch.device:
        return torch.device("cpu")

    def eval(self) -> "ChunkModel":
        return self

    def predict_action(self, obs, generator=None, num_inference_steps=None) -> torch.Tensor:
        cfg = self.config
        c = len(self.calls)
        self.calls.append(obs["state"].clone())
        rows = obs["state"][:, -1, 0].round().long()  # the tests put the env index in state[0]
        t = torch.arange(cfg.pred_horizon) - (TO - 1)  # executable action j sits at t = j
        value = c * 1000 + rows[:, None] * 100 + t[None, :]
        return value[:, :, None].float().expand(-1, -1, cfg.action_dim).clone()


def obs_for(n: int, step: int) -> dict[str, np.ndarray]:
    """Observations of ``n`` envs at ``step``: state[0] = env index, state[1] = step."""
    state = np.zeros((n, 8), dtype=np.float32)
    state[:, 0] = np.arange(n)
    state[:, 1] = step
    return {"img": np.zeros((n, SIZE, SIZE, 3), dtype=np.uint8), "state": state}


def run(agent: DiffusionPolicyAgent, n: int, steps: int, starts: dict[int, list[int]] | None = None) -> np.ndarray:
    """Actions (steps, n) (first action dimension) of ``steps`` predict calls; ``starts[t]``: envs starting then."""
    out = []
    for t in range(steps):
        start = np.zeros(n, dtype=bool)
        start[(starts or {}).get(t, [])] = True
        out.append(agent.predict(obs_for(n, t), episode_start=start)[0][:, 0])
    return np.stack(out)


def test_default_executes_all_ta_actions_per_call() -> None:
    model = ChunkModel()
    got = run(DiffusionPolicyAgent(model), n=1, steps=2 * TA)
    want = [c * 1000 + j for c in range(2) for j in range(TA)]
    np.testing.assert_array_equal(got[:, 0], want)
    assert len(model.calls) == 2


def test_execute_steps_calls_the_model_every_k_steps_with_the_newest_observations() -> None:
    model = ChunkModel()
    agent = DiffusionPolicyAgent(model, execute_steps=6)
    got = run(agent, n=2, steps=18)
    assert len(model.calls) == agent.num_model_calls == 3
    for env in range(2):
        want = [c * 1000 + env * 100 + j for c in range(3) for j in range(6)]  # actions 0..5 of each chunk
        np.testing.assert_array_equal(got[:, env], want)
    # call c saw the observations of steps 6c-1 and 6c (the first frame repeated at the start)
    assert [call[0, :, 1].tolist() for call in model.calls] == [[0, 0], [5, 6], [11, 12]]


def test_episode_start_clears_one_env_and_it_replans_alone() -> None:
    model = ChunkModel()
    agent = DiffusionPolicyAgent(model, execute_steps=6)
    got = run(agent, n=2, steps=8, starts={3: [1]})
    # env 0 runs chunk 0 for steps 0..5; env 1 restarts at step 3 with call 1 (rows [1] only), then call 2 at step 6
    # serves env 0 alone (env 1 still has actions 3..5 of call 1)
    np.testing.assert_array_equal(got[:, 0], [0, 1, 2, 3, 4, 5, 2000, 2001])
    np.testing.assert_array_equal(got[:, 1], [100, 101, 102, 1100, 1101, 1102, 1103, 1104])
    assert [call.shape[0] for call in model.calls] == [2, 1, 1]
    assert model.calls[1][0, :, 1].tolist() == [3, 3]  # a fresh history: step 3's observation repeated


def ensemble_expected(chunk_value, starts: list[int], steps: int, horizon: int, m: float) -> list[float]:
    """ACT's rule written out: at step t average chunk_s[t - s] over the chunks s predicted since the episode
    start and less than ``horizon`` steps ago, weight exp(-m * i) with i = 0 for the oldest."""
    out = []
    for t in range(steps):
        first = max(s for s in starts if s <= t)
        preds = [chunk_value(s, t - s) for s in range(max(first, t - horizon + 1), t + 1)]  # oldest first
        weights = [math.exp(-m * i) for i in range(len(preds))]
        out.append(sum(w * p for w, p in zip(weights, preds)) / sum(weights))
    return out


@pytest.mark.parametrize("m, execute_steps", [(0.5, None), (0.0, None), (0.3, 3)])
def test_temporal_ensemble_is_the_exponentially_weighted_mean(m: float, execute_steps: int | None) -> None:
    model = ChunkModel()
    agent = DiffusionPolicyAgent(model, execute_steps=execute_steps, temporal_ensemble=m)
    steps, horizon = 12, execute_steps or TA
    got = run(agent, n=2, steps=steps, starts={7: [1]})
    assert len(model.calls) == steps  # a new chunk at every step
    # a chunk is predicted at every step, so the chunk of step s is model call s
    env0 = ensemble_expected(lambda s, j: s * 1000 + j, [0], steps, horizon, m)
    env1 = ensemble_expected(lambda s, j: s * 1000 + 100 + j, [0, 7], steps, horizon, m)
    np.testing.assert_allclose(got[:, 0], env0, rtol=1e-6)
    np.testing.assert_allclose(got[:, 1], env1, rtol=1e-6)


def test_oldest_chunk_weighs_most_for_positive_m() -> None:
    agent = DiffusionPolicyAgent(ChunkModel(), temporal_ensemble=2.0)
    got = run(agent, n=1, steps=2)[:, 0]
    # step 1 averages chunk 0's action 1 (value 1) and chunk 1's action 0 (value 1000), weights 1 and e^-2
    assert got[1] == pytest.approx((1 + math.exp(-2.0) * 1000) / (1 + math.exp(-2.0)), rel=1e-6)


def test_options_are_validated_and_setting_them_replans() -> None:
    for bad in (0, TA + 1, 2.5, True, "6"):
        with pytest.raises(ValueError, match=rf"execute_steps must be an int in \[1, {TA}\]"):
            DiffusionPolicyAgent(ChunkModel(), execute_steps=bad)
    for bad in (float("nan"), float("inf"), "0.01", True):
        with pytest.raises(ValueError, match="temporal_ensemble must be a finite number"):
            DiffusionPolicyAgent(ChunkModel(), temporal_ensemble=bad)
    model = ChunkModel()
    agent = DiffusionPolicyAgent(model)
    run(agent, n=1, steps=2)
    agent.execute_steps = 4  # the queue is emptied: the next call plans again
    assert agent.predict(obs_for(1, 2))[0][0, 0] == 1000
    assert agent.chunk_execution == {"execute_steps": 4, "temporal_ensemble": None}
    with pytest.raises(ValueError, match="execute_steps"):
        agent.execute_steps = 9
    agent.temporal_ensemble = 0.01
    assert agent.chunk_execution == {"execute_steps": 4, "temporal_ensemble": 0.01}


def _real_obs(step: int, hw: tuple[int, int]) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(step)
    return {"img": rng.integers(0, 256, (1, *hw, 3), dtype=np.uint8),
            "state": rng.normal(0.0, 0.1, (1, 8)).astype(np.float32)}


@pytest.mark.parametrize("options", [{"execute_steps": 3}, {"temporal_ensemble": 0.1, "execute_steps": 4}])
def test_shared_inference_stand_in_follows_the_options(tmp_path: Path, tiny_checkpoint, options: dict) -> None:
    hw = (24, 32)
    local = load_policy(tiny_checkpoint(tmp_path / "agent", image_hw=hw, seed=5), device="cpu", seed=7, **options)
    server = InferenceServer([local.model], 1, multiprocessing.get_context("spawn"))
    client = InferenceClient(claim_slot(server.slots), server.requests, server.replies)
    remote = DiffusionPolicyAgent(RemoteModel(local.config, 0, client), seed=7, **options)
    steps = 7
    with server:
        got = [remote.collect(remote.submit(_real_obs(t, hw), deterministic=True)) for t in range(steps)]
    want = [local.predict(_real_obs(t, hw), deterministic=True)[0] for t in range(steps)]
    np.testing.assert_allclose(np.stack(got), np.stack(want), atol=1e-4)
    calls = steps if "temporal_ensemble" in options else math.ceil(steps / options["execute_steps"])
    assert server.stats.batches == remote.num_model_calls == local.num_model_calls == calls


@pytest.mark.parametrize("options", [{}, {"execute_steps": 6}, {"execute_steps": 1}, {"temporal_ensemble": 0.01}])
def test_reads_next_observation_names_exactly_the_frames_a_model_reads(options: dict) -> None:
    """What rollout relies on to skip rendering: a step flagged unread never reaches a model call."""
    model = ChunkModel()
    agent = DiffusionPolicyAgent(model, **options)
    assert agent.reads_next_observation().all()  # before any observation
    flagged = {0}  # the first observation always reaches the first call
    steps = 30
    for t in range(steps + TA):  # past the flagged steps, so that the calls reading them have run
        agent.predict(obs_for(2, t))
        reads = agent.reads_next_observation()
        assert reads.shape == (2,) and reads[0] == reads[1]  # the two envs run in step
        if reads[0] and t + 1 < steps:
            flagged.add(t + 1)
    read = {int(v) for call in model.calls for v in call[0, :, 1].tolist() if v < steps}
    assert read == flagged
    if "temporal_ensemble" in options or options.get("execute_steps") == 1:
        assert flagged == set(range(steps))
    else:
        assert len(flagged) < steps / 2
