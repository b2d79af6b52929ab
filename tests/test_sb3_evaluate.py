"""stable-baselines3's evaluate_policy accepts the policy object (the SB3 ``predict`` contract)."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium import spaces
from stable_baselines3.common.evaluation import evaluate_policy
from stable_baselines3.common.monitor import Monitor
from stable_baselines3.common.vec_env import DummyVecEnv

from rf_dp_agents import DiffusionPolicyAgent, tiny_model_config
from rf_dp_agents.model import DiffusionPolicy

SIZE = 16


class TinyReachEnv(gym.Env):
    """Deterministic toy task: a uint8 image and an 8-d state in, 8-d joint targets out.

    Observations depend on the step count only, so a policy that truly restarts at episode starts
    sends the same actions in every episode (with deterministic sampling). Actions are recorded.
    """

    metadata = {"render_modes": []}

    def __init__(self, episode_length: int) -> None:
        self.episode_length = episode_length
        self.observation_space = spaces.Dict(
            {
                "img": spaces.Box(0, 255, (SIZE, SIZE, 3), np.uint8),
                "state": spaces.Box(-np.inf, np.inf, (8,), np.float32),
            }
        )
        self.action_space = spaces.Box(-100.0, 100.0, (8,), np.float32)
        self.episodes: list[list[np.ndarray]] = []
        self._t = 0

    def _obs(self) -> dict[str, np.ndarray]:
        img = np.full((SIZE, SIZE, 3), (37 * self._t) % 256, np.uint8)
        return {"img": img, "state": np.full(8, 0.1 * self._t, np.float32)}

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        self._t = 0
        self.episodes.append([])
        return self._obs(), {}

    def step(self, action: np.ndarray):
        assert self.action_space.contains(np.asarray(action, np.float32)), action
        self.episodes[-1].append(np.array(action, copy=True))
        self._t += 1
        reward = -float(np.abs(np.asarray(action) - 0.1 * self._t).mean())
        return self._obs(), reward, False, self._t >= self.episode_length, {}


@pytest.fixture(scope="module")
def policy() -> DiffusionPolicyAgent:
    torch.manual_seed(0)
    config = tiny_model_config(image_shape=(3, SIZE, SIZE), down_dims=(32, 64), num_inference_steps=2)
    return DiffusionPolicyAgent(DiffusionPolicy(config).eval())


def own_return(policy: DiffusionPolicyAgent, length: int) -> float:
    """Sum of rewards of one deterministic episode of ``TinyReachEnv(length)``, the policy on that env alone."""
    env = TinyReachEnv(length)
    obs, _ = env.reset()
    policy.reset()
    total, done, start = 0.0, False, True
    while not done:
        action, _ = policy.predict({k: v[None] for k, v in obs.items()}, episode_start=np.array([start]), deterministic=True)
        obs, reward, terminated, truncated, _ = env.step(action[0])
        total, done, start = total + reward, terminated or truncated, False
    policy.reset()
    return total


def test_evaluate_policy_on_vectorised_envs_with_unequal_episodes(policy):
    lengths = (5, 11)  # shorter than Ta, and longer than Ta: episodes end mid-chunk and across chunks
    vec_env = DummyVecEnv([lambda n=n: Monitor(TinyReachEnv(n)) for n in lengths])
    policy.reset()
    rewards, episode_lengths = evaluate_policy(
        policy, vec_env, n_eval_episodes=4, deterministic=True, return_episode_rewards=True
    )
    assert sorted(episode_lengths) == [5, 5, 11, 11]
    # each episode's return is what the policy earns alone on that env, stepped by hand with one env
    alone = {length: own_return(policy, length) for length in lengths}
    by_length = sorted(zip(episode_lengths, rewards))
    np.testing.assert_allclose([r for _, r in by_length], [alone[n] for n, _ in by_length], rtol=1e-5)
    for sub_env, length in zip(vec_env.envs, lengths):
        done = [ep for ep in sub_env.unwrapped.episodes if len(ep) == length]
        assert len(done) >= 2
        # the history and queue of this env were cleared at its episode start and nothing else leaked in
        np.testing.assert_allclose(np.stack(done[0]), np.stack(done[1]), atol=1e-5)


def test_evaluate_policy_wraps_a_plain_gymnasium_env(policy):
    alone = own_return(policy, 9)
    mean_reward, std_reward = evaluate_policy(policy, Monitor(TinyReachEnv(9)), n_eval_episodes=2)
    assert mean_reward == pytest.approx(alone, rel=1e-5) and std_reward == pytest.approx(0, abs=1e-5)
    assert policy.n_envs == 1
