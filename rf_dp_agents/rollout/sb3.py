"""A one-arm ``-rf`` task as a plain gymnasium env whose observations are a policy's input dict.

stable-baselines3's ``evaluate_policy`` wants a gymnasium (or vectorised) env and a model with
``predict``. :class:`SingleArmPolicyEnv` wraps a one-arm ManiSkill env (CPU backend, one env) so each
observation is ``{"img": uint8 (H, W, 3), "state": float32 (8,)}`` as numpy, the reward is the task's
sparse success reward (1.0 on success, when the episode terminates) and infos hold plain Python values::

    from stable_baselines3.common.evaluation import evaluate_policy
    from stable_baselines3.common.monitor import Monitor
    from rf_dp_agents import load_policy
    from rf_dp_agents.rollout.sb3 import make_sb3_env

    policy = load_policy("checkpoints/StackCube-rf_Agent0")
    env = Monitor(make_sb3_env("StackCube-rf", policy))
    mean_reward, std_reward = evaluate_policy(policy, env, n_eval_episodes=10)  # mean reward = success rate

The observation is built by the same routing code as multi-agent rollouts (``envs.router``).
"""

from __future__ import annotations

from typing import Any, Mapping

import gymnasium as gym
import numpy as np
import torch
from gymnasium import spaces

import envs.tasks  # noqa: F401  (registers the -rf tasks)
from envs.router import MultiAgentRouter, default_routes
from rf_dp_agents.policy import DiffusionPolicyAgent
from rf_dp_agents.rollout.runner import make_env, task_num_arms


def _plain(value: Any) -> Any:
    """Batch-of-one tensors/arrays -> Python scalars or numpy arrays (what SB3's VecEnv stores in infos)."""
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu().numpy()
    if isinstance(value, np.ndarray):
        value = value.reshape(value.shape[1:]) if value.ndim >= 1 and value.shape[0] == 1 else value
        return value.item() if value.ndim == 0 else value
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    return value


class SingleArmPolicyEnv(gym.Wrapper):
    """Expose a one-arm ``-rf`` env (``obs_mode='rgb'``, one env) with ``policy``-ready numpy observations.

    The observation is what ``envs.router`` routes to the arm's policy (its own camera ``head_camera_agent0``
    and :func:`envs.router.agent_state`), without the batch dimension; the router checks at construction
    that the camera exists and has the policy's image size.
    """

    def __init__(self, env: gym.Env, policy: Any) -> None:
        super().__init__(env)
        base = env.unwrapped
        if int(getattr(base, "num_envs", 1)) != 1:
            raise ValueError(f"SingleArmPolicyEnv needs a single env, got num_envs={base.num_envs}")
        self.router = MultiAgentRouter(env, default_routes(env, [policy]))
        if self.router.multi_agent:
            raise ValueError(f"the env has agents {self.router.agent_keys}; use the rollout runner for several arms")
        self.agent_key = self.router.agent_keys[0]
        cfg = policy.config
        c, h, w = (int(v) for v in cfg.image_shape)
        spaces_by_key: dict[str, spaces.Space] = {k: spaces.Box(0, 255, (h, w, c), dtype=np.uint8) for k in cfg.camera_keys}
        spaces_by_key[cfg.state_key] = spaces.Box(-np.inf, np.inf, (int(cfg.state_dim),), dtype=np.float32)
        self.observation_space = spaces.Dict(spaces_by_key)
        action_space = base.single_action_space
        self.action_space = spaces.Box(
            np.asarray(action_space.low, dtype=np.float32), np.asarray(action_space.high, dtype=np.float32), dtype=np.float32
        )

    def observation(self, obs: Mapping[str, Any]) -> dict[str, np.ndarray]:
        """The policy's input dict (numpy, no batch dimension) for one raw ManiSkill observation."""
        routed = self.router.policy_observation(obs, self.agent_key)
        out = {}
        for key, value in routed.items():
            space = self.observation_space[key]
            out[key] = np.ascontiguousarray(_plain(value), dtype=space.dtype).reshape(space.shape)
        return out

    def reset(self, *, seed: int | None = None, options: dict | None = None) -> tuple[dict[str, np.ndarray], dict]:
        obs, info = self.env.reset(seed=seed, options=options)
        return self.observation(obs), _plain(info)

    def step(self, action: Any) -> tuple[dict[str, np.ndarray], float, bool, bool, dict]:
        action = np.asarray(action, dtype=np.float32).reshape(1, -1)
        obs, reward, terminated, truncated, info = self.env.step(action)
        return self.observation(obs), float(_plain(reward)), bool(_plain(terminated)), bool(_plain(truncated)), _plain(info)


def make_sb3_env(task: str, policy: DiffusionPolicyAgent, max_episode_steps: int | None = None, **make_kwargs: Any) -> SingleArmPolicyEnv:
    """A :class:`SingleArmPolicyEnv` of one-arm ``task`` with cameras at the size ``policy`` was trained on."""
    if task_num_arms(task) != 1:
        raise ValueError(f"{task} has {task_num_arms(task)} arms; evaluate_policy needs a one-arm task (use scripts/rollout.py)")
    _, height, width = policy.config.image_shape
    env = make_env(task, width, height, 1, "cpu", max_episode_steps, **make_kwargs)
    return SingleArmPolicyEnv(env, policy)


__all__ = ["SingleArmPolicyEnv", "make_sb3_env"]
