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

A shared policy (one model for several arms, ``rf_dp_agents.architecture``) is routed under the tuple of the
agent keys it drives: it runs once per step for all of them, its state is their states concatenated in that
order and its action is split back per arm, so the arms' action queues stay in lock step. Routes, the state
definition (:func:`agent_state`) and the observation helpers live in :mod:`envs.routes`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

import numpy as np
import torch

from envs.routes import (
    STATE_DIM,
    AgentRoute,
    RouteKey,
    agent_qpos,
    agent_state,
    concat_states,
    default_routes,
    env_agent_keys,
    policy_cameras,
    policy_input,
    split_action,
)

@dataclass
class _Plan:
    """A validated route: the policy, the agents it drives and where each of its inputs comes from."""

    policy: Any
    agents: list[str]  # env agent keys, in the order of the policy's state and action
    camera_map: list[tuple[str, str]]  # (policy key, env camera uid)
    state_key: str
    state_fn: Callable[[Mapping[str, Any], str], Any]
    state_dim: int  # the policy's whole state
    action_dims: list[int]  # per agent

    @property
    def action_dim(self) -> int:
        """The policy's whole action: the agents' actions side by side."""
        return sum(self.action_dims)


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

    ``routes`` maps each agent key, or a tuple of agent keys that one shared policy drives, to its
    :class:`AgentRoute`; every env agent must be covered exactly once. ``act(obs, episode_start)`` is the
    building block (the caller steps the env); ``reset``/``step`` keep ``episode_start`` for you, and
    ``run_episode`` runs a whole episode.
    """

    def __init__(self, env: Any, routes: Mapping[RouteKey, AgentRoute]) -> None:
        self.env = env
        base = env.unwrapped
        self.agent_keys = env_agent_keys(env)
        self.multi_agent = hasattr(base.agent, "agents_dict")
        self.num_envs = int(base.num_envs)
        self.device = base.device
        if not isinstance(routes, Mapping):
            raise TypeError(f"routes must map agent keys to AgentRoute, got {type(routes).__name__}")
        covered = [a for key in routes for a in (key if isinstance(key, tuple) else (key,))]
        unknown = [k for k in covered if k not in self.agent_keys]
        if unknown:
            raise ValueError(f"routes name agents {unknown} that the env does not have; its agents are {self.agent_keys}")
        twice = sorted({k for k in covered if covered.count(k) > 1})
        if twice:
            raise ValueError(f"agents {twice} have more than one route; each agent is driven by one policy")
        missing = [k for k in self.agent_keys if k not in covered]
        if missing:
            raise ValueError(f"agents {missing} have no route; every agent of the env needs a policy ({self.agent_keys})")
        order = sorted(routes, key=lambda k: self.agent_keys.index(k[0] if isinstance(k, tuple) else k))
        self.plans: dict[RouteKey, _Plan] = {key: self._validate(base, key, routes[key]) for key in order}
        self._route_of = {a: key for key, plan in self.plans.items() for a in plan.agents}
        self._episode_start = np.ones(self.num_envs, dtype=bool)

    # ------------------------------------------------------------------ construction checks
    def _validate(self, base: Any, route_key: RouteKey, route: AgentRoute) -> _Plan:
        agents = list(route_key) if isinstance(route_key, tuple) else [route_key]
        key = route_key if len(agents) == 1 and not isinstance(route_key, tuple) else tuple(agents)
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
            if int(cfg.state_dim) != STATE_DIM * len(agents):
                raise ValueError(
                    f"agent {key!r}: state 'qpos' gives {STATE_DIM} values (7 joints + gripper opening) per arm, "
                    f"{STATE_DIM * len(agents)} for {len(agents)} arm(s), but the policy's config.state_dim is "
                    f"{cfg.state_dim}"
                )
        elif callable(route.state):
            state_fn = route.state
        else:
            raise ValueError(
                f"agent {key!r}: AgentRoute.state names the state source, 'qpos' (7 joints + gripper opening) or a "
                f"callable f(obs, agent_key); got {route.state!r} (the policy's key, config.state_key="
                f"{cfg.state_key!r}, is used automatically)"
            )
        spaces = [base.single_action_space[a] if self.multi_agent else base.single_action_space for a in agents]
        if any(len(_space_shape(sp)) != 1 for sp in spaces) or sum(_space_shape(sp)[0] for sp in spaces) != int(cfg.action_dim):
            raise ValueError(
                f"agent {key!r}: the env's action is {' + '.join(str(_space_shape(sp)) for sp in spaces)} but the "
                f"policy's config.action_dim is {cfg.action_dim}"
            )
        dims = [_space_shape(sp)[0] for sp in spaces]
        return _Plan(policy, agents, camera_map, str(cfg.state_key), state_fn, int(cfg.state_dim), dims)

    # ------------------------------------------------------------------ per step
    def policy_observation(self, obs: Mapping[str, Any], key: RouteKey) -> dict[str, Any]:
        """The input of agent ``key``'s policy (for an agent of a shared route, the shared policy's; a route's
        tuple key works too): ``{camera_key: uint8 (B, H, W, 3), state_key: float32 (B, D)}``."""
        plan = self.plans[key] if key in self.plans else self.plans[self._route_of[key]]  # type: ignore[index]
        sensors = obs["sensor_data"]
        out: dict[str, Any] = {}
        for policy_key, cam in plan.camera_map:
            if cam not in sensors:
                raise KeyError(f"agent {key!r}: camera {cam!r} is missing from this observation; it has {sorted(sensors)}")
            out[policy_key] = sensors[cam]["rgb"]
        state = concat_states([plan.state_fn(obs, agent) for agent in plan.agents])
        if tuple(state.shape[-1:]) != (plan.state_dim,):
            raise ValueError(f"agent {key!r}: state has shape {tuple(state.shape)}, the policy expects (B, {plan.state_dim})")
        out[plan.state_key] = state
        return out

    def policy_observations(self, obs: Mapping[str, Any]) -> dict[RouteKey, dict[str, Any]]:
        """:meth:`policy_observation` for every route, keyed like the routes (agent key, or tuple for a shared one)."""
        return {key: self.policy_observation(obs, key) for key in self.plans}

    def cameras_read_next(self) -> set[str]:
        """The env cameras whose next frame some policy's model will read: every camera of a policy, unless the
        policy reports (``reads_next_observation()``, per env) that no env's next frame reaches its model."""
        cameras: set[str] = set()
        for plan in self.plans.values():
            probe = getattr(plan.policy, "reads_next_observation", None)
            if probe is None or bool(np.any(probe())):
                cameras.update(cam for _, cam in plan.camera_map)
        return cameras

    def act(self, obs: Mapping[str, Any], episode_start: Any = None, deterministic: bool = True) -> Any:
        """One action per env from every policy, merged: ``{key: float32 (B, 8)}``, or one (B, 8) array for a one-arm env.

        ``episode_start`` (bool per env; None means no env starts an episode) is passed on to every
        policy so it can clear that env's history and action queue. A shared policy runs once and its
        action is split among its agents.
        """
        starts = _to_numpy_bool(episode_start, self.num_envs, "episode_start")
        pending: dict[RouteKey, Any] = {}
        for key, plan in self.plans.items():  # policies that can start their model without waiting all start first
            policy = plan.policy
            if callable(getattr(policy, "submit", None)) and callable(getattr(policy, "collect", None)):
                pending[key] = policy.submit(self.policy_observation(obs, key), starts, deterministic)
        actions: dict[str, torch.Tensor] = {}
        for key, plan in self.plans.items():
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
            actions.update(split_action(action, plan.agents, plan.action_dims))
        actions = {agent: actions[agent] for agent in self.agent_keys}
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


__all__ = [  # the router, and the routing names this module has always offered (now in envs.routes)
    "STATE_DIM",
    "AgentRoute",
    "EpisodeSummary",
    "MultiAgentRouter",
    "agent_qpos",
    "agent_state",
    "default_routes",
    "policy_cameras",
    "policy_input",
    "env_agent_keys",
    "split_action",
]
