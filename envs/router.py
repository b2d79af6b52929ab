"""Multi-agent routing: one policy per arm, each fed its own camera(s) and joint state, actions merged.

ManiSkill's multi-agent envs key robots ``"<uid>-<i>"`` (``panda-0``, ``panda-1``...): observations
``obs["agent"][key]["qpos"]``, cameras ``obs["sensor_data"][cam]["rgb"]`` (B, H, W, 3) uint8, actions a dict
``{key: (B, 8)}``. A one-arm env has a plain agent (``obs["agent"]["qpos"]``, one action array); the router
calls it ``"<uid>-0"`` (``panda-0``) so every task is routed the same way.

:class:`MultiAgentRouter` takes the env and an :class:`AgentRoute` per agent key. At construction it checks
that every agent has a route and every route an agent, that every named camera exists and yields RGB
of the (H, W) in the policy's ``config.image_shape`` (C, H, W), and that the state and action sizes
match ``config.state_dim`` / ``config.action_dim``; a mismatch raises an error naming the agent and the
key (multi-agent cameras that silently vanish, ManiSkill issue 1356, fail here instead).
Each step it builds every policy's observation ``{camera_key: uint8 (B, H, W, 3), state_key: float32
(B, D)}``, calls ``policy.predict(obs, episode_start=...)`` (the stable-baselines3 contract, batched over
parallel envs) and merges the actions into the env's action.

The state definition shared by the datasets, the demo converter and the router is :func:`agent_state`:
the 7 measured arm joint angles (rad) followed by the gripper opening, the sum of the two finger joint
positions (m, 0 to 0.08): 8 values.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence, Union

import numpy as np
import torch

STATE_DIM = 8
"""Size of :func:`agent_state`: 7 arm joints + gripper opening."""
ARM_JOINTS = 7

StateSource = Union[str, Callable[[Mapping[str, Any], str], Any]]


def agent_state(obs_or_qpos: Any, agent_key: str | None = None) -> Any:
    """Policy state of one arm: 7 arm joint angles + gripper opening (finger joint sum), shape (..., 8).

    Pass either a raw ManiSkill observation and the agent key (``agent_state(obs, "panda-1")``), or a
    Panda qpos array (..., 9) directly (``agent_state(qpos)``). Torch in gives float32 torch out (same
    device); anything else gives a float32 NumPy array.
    """
    qpos = agent_qpos(obs_or_qpos, agent_key) if isinstance(obs_or_qpos, Mapping) else obs_or_qpos
    if isinstance(qpos, torch.Tensor):
        if qpos.shape[-1] != ARM_JOINTS + 2:
            raise ValueError(f"agent_state needs Panda qpos (..., 9), got shape {tuple(qpos.shape)}")
        q = qpos.float()
        return torch.cat([q[..., :ARM_JOINTS], q[..., ARM_JOINTS:].sum(dim=-1, keepdim=True)], dim=-1)
    q = np.asarray(qpos, dtype=np.float32)
    if q.shape[-1:] != (ARM_JOINTS + 2,):
        raise ValueError(f"agent_state needs Panda qpos (..., 9), got shape {q.shape}")
    return np.concatenate([q[..., :ARM_JOINTS], q[..., ARM_JOINTS:].sum(axis=-1, keepdims=True)], axis=-1)


def agent_qpos(obs: Mapping[str, Any], agent_key: str | None) -> Any:
    """``obs["agent"][agent_key]["qpos"]``; for a one-arm observation (``obs["agent"]["qpos"]``) the key must end in ``-0``."""
    agents = obs.get("agent")
    if not isinstance(agents, Mapping):
        raise KeyError("observation has no 'agent' dict: make the env with an obs_mode that includes the agent state")
    if agent_key is None:
        raise TypeError("agent_state(obs, agent_key): an observation dict needs the agent key, e.g. 'panda-0'")
    if agent_key in agents and isinstance(agents[agent_key], Mapping):
        return agents[agent_key]["qpos"]
    if "qpos" in agents and agent_key.endswith("-0"):
        return agents["qpos"]
    keys = [k for k, v in agents.items() if isinstance(v, Mapping)] or ["<single agent>-0"]
    raise KeyError(f"observation has no agent {agent_key!r}; its agents are {keys}")


def env_agent_keys(env: Any) -> list[str]:
    """Agent keys of a ManiSkill env in action order: the MultiAgent's keys, or ``["<uid>-0"]`` for one arm."""
    agent = env.unwrapped.agent
    if hasattr(agent, "agents_dict"):
        return list(agent.agents_dict)
    return [f"{agent.uid}-0"]


@dataclass(frozen=True)
class AgentRoute:
    """What one agent's policy sees.

    ``cameras``: env camera uids in the order of the policy's ``config.camera_keys``, or a mapping
    ``{policy_camera_key: env_camera_uid}``. ``state``: ``"qpos"`` for :func:`agent_state`, or a callable
    ``f(obs, agent_key) -> (B, state_dim)``.
    """

    policy: Any
    cameras: Sequence[str] | Mapping[str, str] = ("head_camera_agent0",)
    state: StateSource = "qpos"


@dataclass
class _Plan:
    """A validated route: the policy and where each of its inputs comes from."""

    policy: Any
    camera_map: list[tuple[str, str]]  # (policy key, env camera uid)
    state_key: str
    state_fn: Callable[[Mapping[str, Any], str], Any]
    state_dim: int
    action_dim: int


@dataclass
class EpisodeSummary:
    """Outcome of :meth:`MultiAgentRouter.run_episode` for each parallel env."""

    steps: int
    """Env steps taken (until every env was done or the cap)."""
    success: np.ndarray
    """bool (B,): ``info["success"]`` held at some step."""
    first_success_step: np.ndarray
    """int (B,): 1-based step of the first success, -1 if none."""
    extra_success: dict[str, np.ndarray] = field(default_factory=dict)
    """Other ``success_*`` rules of ``info`` (e.g. ``success_strict``): bool (B,) ever held."""


def _space_shape(space: Any) -> tuple[int, ...]:
    return tuple(int(v) for v in space.shape)


def _to_numpy_bool(x: Any, n: int, what: str) -> np.ndarray:
    if x is None:
        return np.zeros(n, dtype=bool)
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    arr = np.asarray(x, dtype=bool).reshape(-1)
    if arr.size == 1 and n > 1:
        arr = np.repeat(arr, n)
    if arr.shape != (n,):
        raise ValueError(f"{what} must have one flag per env ({n}), got shape {np.shape(x)}")
    return arr


class MultiAgentRouter:
    """Feeds each agent's policy its own cameras and state, and merges their actions for ``env.step``.

    ``act(obs, episode_start)`` is the building block (the caller steps the env); ``reset``/``step``
    keep ``episode_start`` for you, and ``run_episode`` runs a whole episode.
    """

    def __init__(self, env: Any, routes: Mapping[str, AgentRoute]) -> None:
        self.env = env
        base = env.unwrapped
        self.agent_keys = env_agent_keys(env)
        self.multi_agent = hasattr(base.agent, "agents_dict")
        self.num_envs = int(base.num_envs)
        self.device = base.device
        if not isinstance(routes, Mapping):
            raise TypeError(f"routes must map agent keys to AgentRoute, got {type(routes).__name__}")
        unknown = [k for k in routes if k not in self.agent_keys]
        if unknown:
            raise ValueError(f"routes name agents {unknown} that the env does not have; its agents are {self.agent_keys}")
        missing = [k for k in self.agent_keys if k not in routes]
        if missing:
            raise ValueError(f"agents {missing} have no route; every agent of the env needs a policy ({self.agent_keys})")
        self.plans: dict[str, _Plan] = {key: self._validate(base, key, routes[key]) for key in self.agent_keys}
        self._episode_start = np.ones(self.num_envs, dtype=bool)

    # ------------------------------------------------------------------ construction checks
    def _validate(self, base: Any, key: str, route: AgentRoute) -> _Plan:
        if not isinstance(route, AgentRoute):
            raise TypeError(f"route for agent {key!r} must be an AgentRoute, got {type(route).__name__}")
        policy = route.policy
        cfg = getattr(policy, "config", None)
        needed = ("camera_keys", "image_shape", "state_key", "state_dim", "action_dim")
        if cfg is None or any(not hasattr(cfg, a) for a in needed) or not callable(getattr(policy, "predict", None)):
            raise TypeError(
                f"agent {key!r}: the policy needs predict() and a config with {', '.join(needed)} "
                f"(got {type(policy).__name__})"
            )
        camera_keys = tuple(cfg.camera_keys)
        if isinstance(route.cameras, Mapping):
            if set(route.cameras) != set(camera_keys):
                raise ValueError(
                    f"agent {key!r}: cameras map policy keys {sorted(route.cameras)} but the policy's "
                    f"config.camera_keys are {list(camera_keys)}"
                )
            camera_map = [(k, str(route.cameras[k])) for k in camera_keys]
        else:
            cams = [route.cameras] if isinstance(route.cameras, str) else list(route.cameras)
            if len(cams) != len(camera_keys):
                raise ValueError(
                    f"agent {key!r}: route names {len(cams)} camera(s) {cams} but the policy's config.camera_keys "
                    f"are {list(camera_keys)}"
                )
            camera_map = list(zip(camera_keys, (str(c) for c in cams)))
        sensors = sorted(getattr(base, "_sensors", {}))
        obs_space = base.single_observation_space
        sensor_space = obs_space["sensor_data"] if hasattr(obs_space, "spaces") and "sensor_data" in obs_space.spaces else None
        c, h, w = (int(v) for v in cfg.image_shape)
        for policy_key, cam in camera_map:
            if cam not in sensors:
                raise ValueError(f"agent {key!r}: camera {cam!r} (for policy key {policy_key!r}) is not in the env; its cameras are {sensors}")
            if sensor_space is None or cam not in sensor_space.spaces or "rgb" not in sensor_space[cam].spaces:
                raise ValueError(
                    f"agent {key!r}: the env gives no RGB for camera {cam!r} (obs_mode={base.obs_mode!r}); "
                    f"make it with obs_mode='rgb'"
                )
            got = _space_shape(sensor_space[cam]["rgb"])
            if c != 3 or got != (h, w, 3):
                raise ValueError(
                    f"agent {key!r}: camera {cam!r} gives images (H, W, C)={got} but policy key {policy_key!r} expects "
                    f"config.image_shape (C, H, W)={tuple(cfg.image_shape)}; size the env cameras to match"
                )
        if route.state == "qpos":
            state_fn: Callable[[Mapping[str, Any], str], Any] = agent_state
            if int(cfg.state_dim) != STATE_DIM:
                raise ValueError(
                    f"agent {key!r}: state 'qpos' gives {STATE_DIM} values (7 joints + gripper opening) but the "
                    f"policy's config.state_dim is {cfg.state_dim}"
                )
        elif callable(route.state):
            state_fn = route.state
        else:
            raise ValueError(
                f"agent {key!r}: AgentRoute.state names the state source, 'qpos' (7 joints + gripper opening) or a "
                f"callable f(obs, agent_key); got {route.state!r} (the policy's key, config.state_key="
                f"{cfg.state_key!r}, is used automatically)"
            )
        space = base.single_action_space[key] if self.multi_agent else base.single_action_space
        if _space_shape(space) != (int(cfg.action_dim),):
            raise ValueError(
                f"agent {key!r}: the env's action is {_space_shape(space)} but the policy's config.action_dim is {cfg.action_dim}"
            )
        return _Plan(policy, camera_map, str(cfg.state_key), state_fn, int(cfg.state_dim), int(cfg.action_dim))

    # ------------------------------------------------------------------ per step
    def policy_observation(self, obs: Mapping[str, Any], key: str) -> dict[str, Any]:
        """Agent ``key``'s policy input: ``{camera_key: uint8 (B, H, W, 3), state_key: float32 (B, D)}``."""
        plan = self.plans[key]
        sensors = obs["sensor_data"]
        out: dict[str, Any] = {}
        for policy_key, cam in plan.camera_map:
            if cam not in sensors:
                raise KeyError(f"agent {key!r}: camera {cam!r} is missing from this observation; it has {sorted(sensors)}")
            out[policy_key] = sensors[cam]["rgb"]
        state = plan.state_fn(obs, key)
        if tuple(state.shape[-1:]) != (plan.state_dim,):
            raise ValueError(f"agent {key!r}: state has shape {tuple(state.shape)}, the policy expects (B, {plan.state_dim})")
        out[plan.state_key] = state
        return out

    def policy_observations(self, obs: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
        """:meth:`policy_observation` for every agent, keyed by agent."""
        return {key: self.policy_observation(obs, key) for key in self.agent_keys}

    def act(self, obs: Mapping[str, Any], episode_start: Any = None, deterministic: bool = True) -> Any:
        """One action per env from every policy, merged: ``{key: float32 (B, 8)}``, or one (B, 8) array for a one-arm env.

        ``episode_start`` (bool per env; None means no env starts an episode) is passed on to every
        policy so it can clear that env's history and action queue.
        """
        starts = _to_numpy_bool(episode_start, self.num_envs, "episode_start")
        pending: dict[str, Any] = {}
        for key in self.agent_keys:  # policies that can start their model without waiting all start first
            policy = self.plans[key].policy
            if callable(getattr(policy, "submit", None)) and callable(getattr(policy, "collect", None)):
                pending[key] = policy.submit(self.policy_observation(obs, key), starts, deterministic)
        actions: dict[str, torch.Tensor] = {}
        for key in self.agent_keys:
            plan = self.plans[key]
            if key in pending:
                action = plan.policy.collect(pending[key])
            else:
                result = plan.policy.predict(
                    self.policy_observation(obs, key), state=None, episode_start=starts, deterministic=deterministic
                )
                action = result[0] if isinstance(result, tuple) else result
            action = torch.as_tensor(action, dtype=torch.float32, device=self.device)
            if action.shape != (self.num_envs, plan.action_dim):
                raise ValueError(
                    f"agent {key!r}: policy returned an action of shape {tuple(action.shape)}, expected "
                    f"({self.num_envs}, {plan.action_dim})"
                )
            actions[key] = action
        return actions if self.multi_agent else actions[self.agent_keys[0]]

    # ------------------------------------------------------------------ episode helpers
    def reset(self, seed: Any = None, options: dict | None = None) -> tuple[Any, Any]:
        """Reset the env; the next :meth:`step` tells every policy that a new episode starts."""
        obs, info = self.env.reset(seed=seed, options=options)
        self._episode_start = np.ones(self.num_envs, dtype=bool)
        return obs, info

    def step(self, obs: Mapping[str, Any], deterministic: bool = True) -> tuple[Any, Any, Any, Any, Any]:
        """Act on ``obs`` and step the env; envs that end (terminated or truncated) start afresh on the next call."""
        action = self.act(obs, episode_start=self._episode_start, deterministic=deterministic)
        obs, reward, terminated, truncated, info = self.env.step(action)
        self._episode_start = _to_numpy_bool(terminated, self.num_envs, "terminated") | _to_numpy_bool(
            truncated, self.num_envs, "truncated"
        )
        return obs, reward, terminated, truncated, info

    def run_episode(self, seed: Any = None, max_steps: int | None = None, deterministic: bool = True) -> EpisodeSummary:
        """Reset with ``seed`` and step until every env has terminated or truncated (or ``max_steps``)."""
        cap = max_steps if max_steps is not None else getattr(getattr(self.env, "spec", None), "max_episode_steps", None)
        if not cap:
            raise ValueError("run_episode needs max_steps: the env has no max_episode_steps")
        obs, _ = self.reset(seed=seed)
        n = self.num_envs
        done = np.zeros(n, dtype=bool)
        first = np.full(n, -1, dtype=np.int64)
        extra: dict[str, np.ndarray] = {}
        steps = 0
        while steps < cap and not done.all():
            obs, _, terminated, truncated, info = self.step(obs, deterministic=deterministic)
            steps += 1
            live = ~done
            if "success" in info:
                now = _to_numpy_bool(info["success"], n, "info['success']") & live
                first[now & (first < 0)] = steps
            for rule in (k for k in info if k.startswith("success_")):
                flag = _to_numpy_bool(info[rule], n, f"info[{rule!r}]") & live
                extra[rule] = extra.get(rule, np.zeros(n, dtype=bool)) | flag
            done |= _to_numpy_bool(terminated, n, "terminated") | _to_numpy_bool(truncated, n, "truncated")
        return EpisodeSummary(steps=steps, success=first >= 0, first_success_step=first, extra_success=extra)


def default_routes(env: Any, policies: Sequence[Any] | Mapping[str, Any]) -> dict[str, AgentRoute]:
    """RoboFactory's routing: agent i's policy sees ``head_camera_agent<i>`` and its own joint state.

    A policy with more cameras gets them by the dataset naming convention: policy key ``img`` is the agent's
    own ``head_camera_agent<i>``, ``img_<camera>`` is the env camera ``<camera>`` (``img_head_camera_global``).
    """
    keys = env_agent_keys(env)
    if isinstance(policies, Mapping):
        items = [(k, policies[k]) for k in keys if k in policies]
        if len(items) != len(policies):
            raise ValueError(f"policies are keyed {sorted(policies)} but the env's agents are {keys}")
    else:
        if len(policies) != len(keys):
            raise ValueError(f"{len(policies)} policies for an env with {len(keys)} agents {keys}")
        items = list(zip(keys, policies))
    return {
        key: AgentRoute(policy, cameras=policy_cameras(policy, f"head_camera_agent{keys.index(key)}"))
        for key, policy in items
    }


def policy_cameras(policy: Any, own_camera: str) -> dict[str, str]:
    """Map each of the policy's camera keys to an env camera: ``img`` (or a policy's only camera) ->
    ``own_camera``, ``img_<cam>`` -> ``<cam>``, any other key -> the env camera of that name."""
    keys = tuple(policy.config.camera_keys)
    mapping = {}
    for key in keys:
        if key == "img" or len(keys) == 1:
            mapping[key] = own_camera
        else:
            mapping[key] = key[len("img_"):] if key.startswith("img_") else key
    return mapping


__all__ = [
    "STATE_DIM",
    "AgentRoute",
    "EpisodeSummary",
    "MultiAgentRouter",
    "agent_qpos",
    "agent_state",
    "default_routes",
    "policy_cameras",
    "env_agent_keys",
]
