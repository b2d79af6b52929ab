"""stable-baselines3's evaluate_policy runs a loaded policy on the one-arm StackCube-rf through the adapter."""

from __future__ import annotations

import numpy as np
import pytest
from stable_baselines3.common.evaluation import evaluate_policy
from stable_baselines3.common.monitor import Monitor

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


def test_adapter_refuses_multi_arm_tasks(policy: DiffusionPolicyAgent) -> None:
    from rf_dp_agents.rollout.sb3 import make_sb3_env

    with pytest.raises(ValueError, match="LiftBarrier-rf has 2 arms"):
        make_sb3_env("LiftBarrier-rf", policy)
