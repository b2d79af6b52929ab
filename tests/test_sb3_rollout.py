"""stable-baselines3's evaluate_policy runs a loaded policy on the one-arm StackCube-rf through the adapter."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch
from stable_baselines3.common.evaluation import evaluate_policy
from stable_baselines3.common.monitor import Monitor

from envs.tasks.base import CUBE_HALF_SIZE
from mani_skill.utils.structs.pose import Pose
from rf_dp_agents import DiffusionPolicyAgent, load_policy

TASK = "StackCube-rf"
MAX_STEPS = 5


@pytest.fixture(scope="module")
def policy(tmp_path_factory: pytest.TempPathFactory, tiny_checkpoint) -> DiffusionPolicyAgent:
    run = tmp_path_factory.mktemp("checkpoints") / f"{TASK}_Agent0"
    tiny_checkpoint(run / "best", image_hw=(32, 48))
    loaded = load_policy(run, device="cpu")
    loaded.model.config.num_inference_steps = 2
    return loaded


def test_evaluate_policy_on_one_arm_task(policy: DiffusionPolicyAgent) -> None:
    from rf_dp_agents.rollout.sb3 import make_sb3_env

    env = make_sb3_env(TASK, policy, max_episode_steps=MAX_STEPS)
    try:
        obs, info = env.reset(seed=7)
        assert env.observation_space.contains(obs)
        assert obs["img"].shape == (32, 48, 3) and obs["img"].dtype == np.uint8
        assert obs["state"].shape == (8,) and obs["state"].dtype == np.float32
        assert isinstance(info, dict)
        calls = policy.num_model_calls
        rewards, lengths = evaluate_policy(
            policy, Monitor(env), n_eval_episodes=2, deterministic=True, return_episode_rewards=True
        )
        assert lengths == [MAX_STEPS, MAX_STEPS]  # untrained: no success, each episode runs to the cap
        assert len(rewards) == 2 and all(r in (0.0, 1.0) for r in rewards)
        # a chunk of Ta=8 actions covers a 5-step episode, and episode_start makes each episode plan afresh
        assert policy.num_model_calls - calls == 2
    finally:
        env.close()


class StackedOnEvenSeeds(gym.Wrapper):
    """Resets with cube A resting on cube B (a finished task) in every other episode: seeds 0, 2, 4..."""

    def __init__(self, env: gym.Env) -> None:
        super().__init__(env)
        self.episodes = 0

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        seed = self.episodes if seed is None else seed
        self.episodes += 1
        obs, info = self.env.reset(seed=seed, options=options)
        if seed % 2 == 0:
            u = self.env.unwrapped
            b = u.cubeB.pose.p
            u.cubeA.set_pose(Pose.create_from_pq(p=b + torch.tensor([0.0, 0.0, 2 * CUBE_HALF_SIZE]), q=u.cubeB.pose.q))
            obs = u.get_obs()
        return obs, info


def test_mean_reward_is_the_success_rate(policy: DiffusionPolicyAgent) -> None:
    """README: with the adapter, evaluate_policy's mean reward is the success rate (sparse reward 1 at success,
    which ends the episode)."""
    from rf_dp_agents.rollout.runner import make_env
    from rf_dp_agents.rollout.sb3 import SingleArmPolicyEnv

    _, height, width = policy.config.image_shape
    env = SingleArmPolicyEnv(StackedOnEvenSeeds(make_env(TASK, width, height, 1, "cpu", MAX_STEPS)), policy)
    successes = []

    def on_step(locals_: dict, _globals: dict) -> None:
        if locals_["done"]:
            successes.append(bool(locals_["info"]["success"]))

    try:
        rewards, lengths = evaluate_policy(policy, Monitor(env), n_eval_episodes=2, deterministic=True, callback=on_step,
                                           return_episode_rewards=True)
    finally:
        env.close()
    assert successes == [True, False]
    assert np.mean(rewards) == pytest.approx(np.mean(successes))  # evaluate_policy's mean reward: the success rate
    assert rewards == [1.0, 0.0]
    assert [n < MAX_STEPS for n in lengths] == successes  # success ends the episode; the others run to the cap


def test_adapter_refuses_multi_arm_tasks(policy: DiffusionPolicyAgent) -> None:
    from rf_dp_agents.rollout.sb3 import make_sb3_env

    with pytest.raises(ValueError, match="LiftBarrier-rf has 2 arms"):
        make_sb3_env("LiftBarrier-rf", policy)
