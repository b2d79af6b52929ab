"""How predicted joint targets reach the controller: ``direct`` or ``topp`` (RoboFactory's way).

* ``direct``: each policy action (7 absolute joint targets + gripper) is one env step of ``pd_joint_pos``.
* ``topp``: each predicted target is re-timed from the arm's last commanded target with mplib's
  time-optimal path parameterisation (``Planner.TOPP``, the arm's velocity and acceleration limits,
  sampled at the control time step), as RoboFactory's ``eval_multi_dp.py`` does. The samples are sent
  one env step each, all arms in lock step: an arm whose re-timed path is shorter holds its last sample.
  A TOPP failure is counted and the arm holds its position for that step (RoboFactory's fallback).
  Differences from RoboFactory: a target that is already reached (no motion) is sent as one step and is
  not counted as a failure, and a move shorter than one control step is sent as its target in one step
  (RoboFactory would resend the start position).

An :class:`Execution` turns one merged action ``{agent_key: (B, 8)}`` into the list of env actions to
send; the runner steps the env through them.
"""

from __future__ import annotations

from typing import Any, Literal, Mapping

import numpy as np
import torch

ExecutionName = Literal["direct", "topp"]
ARM_DOF = 7
NO_MOTION = 1e-6
"""Largest joint change (rad) treated as "already there" by TOPP execution."""


def _numpy(x: Any) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    return np.asarray(x)


def agent_handles(env: Any) -> dict[str, Any]:
    """The ManiSkill agent of each arm, keyed like the env's action dict (``panda-0``...; ``panda-0`` for one arm)."""
    agent = env.unwrapped.agent
    if hasattr(agent, "agents_dict"):
        return dict(agent.agents_dict)
    return {f"{agent.uid}-0": agent}


def as_agent_actions(action: Any, keys: list[str]) -> dict[str, np.ndarray]:
    """A merged action (dict per agent key, or one array for a one-arm env) as ``{key: float32 (B, 8)}``."""
    if isinstance(action, Mapping):
        missing = [k for k in keys if k not in action]
        if missing:
            raise ValueError(f"action has no entry for agents {missing}; got keys {sorted(action)}")
        items = {k: action[k] for k in keys}
    else:
        if len(keys) != 1:
            raise ValueError(f"a single action array was given for an env with agents {keys}")
        items = {keys[0]: action}
    out = {}
    for k, a in items.items():
        arr = _numpy(a).astype(np.float32)
        if arr.shape[-1] != ARM_DOF + 1:
            raise ValueError(f"action for {k} must end in {ARM_DOF + 1} values, got shape {arr.shape}")
        out[k] = arr.reshape(-1, ARM_DOF + 1)
    return out


def to_env_action(actions: Mapping[str, np.ndarray], multi_agent: bool) -> Any:
    """The action the env expects: the dict for a multi-agent env, the single array otherwise."""
    if multi_agent:
        return dict(actions)
    return next(iter(actions.values()))


class Execution:
    """Direct execution: one env step per policy action. Subclasses re-time the targets."""

    name: ExecutionName = "direct"

    def __init__(self, env: Any) -> None:
        self.env = env
        self.agents = agent_handles(env)
        self.keys = list(self.agents)
        self.planning_calls = np.zeros(0, dtype=np.int64)
        """Per env of the batch: TOPP re-timings attempted this episode."""
        self.planning_failures = np.zeros(0, dtype=np.int64)
        """Per env of the batch: TOPP re-timings that failed this episode."""

    def begin_episode(self, num_envs: int) -> None:
        """Reset per-episode counters (call after ``env.reset``)."""
        self.planning_calls = np.zeros(num_envs, dtype=np.int64)
        self.planning_failures = np.zeros(num_envs, dtype=np.int64)

    def expand(self, actions: Mapping[str, np.ndarray]) -> list[dict[str, np.ndarray]]:
        """The env actions ``[{key: (B, 8)}, ...]`` that carry out one policy action per agent."""
        return [dict(actions)]


class ToppExecution(Execution):
    """RoboFactory's execution: every predicted joint target re-timed with mplib's TOPP."""

    name: ExecutionName = "topp"

    def __init__(self, env: Any, joint_vel_limits: float = 0.9, joint_acc_limits: float = 0.9) -> None:
        super().__init__(env)
        from envs.solvers.planner import arm_planner

        self.dt = float(env.unwrapped.control_timestep)
        self.planners = {key: arm_planner(ag, joint_vel_limits, joint_acc_limits) for key, ag in self.agents.items()}
        self._commanded: dict[str, np.ndarray] = {}

    def begin_episode(self, num_envs: int) -> None:
        super().begin_episode(num_envs)
        self._commanded = {
            key: _numpy(ag.robot.get_qpos()).reshape(num_envs, -1)[:, :ARM_DOF].astype(np.float64)
            for key, ag in self.agents.items()
        }

    def retime(self, key: str, start: np.ndarray, target: np.ndarray) -> np.ndarray | None:
        """Joint samples (K, 7) from ``start`` to ``target`` at the control step; None when TOPP fails."""
        if np.abs(target - start).max() <= NO_MOTION:
            return target[None]
        try:
            _, position, _, _, _ = self.planners[key].TOPP(np.vstack([start, target]), self.dt, verbose=False)
        except Exception:  # toppra raises assorted errors on degenerate paths
            return None
        position = np.asarray(position, dtype=np.float64)
        if position.ndim != 2 or position.shape[0] == 0:
            return target[None]
        return position

    def expand(self, actions: Mapping[str, np.ndarray]) -> list[dict[str, np.ndarray]]:
        paths: dict[str, list[np.ndarray]] = {}
        grippers: dict[str, np.ndarray] = {}
        for key in self.keys:
            act = np.asarray(actions[key], dtype=np.float64)
            grippers[key] = act[:, ARM_DOF]
            paths[key] = []
            for b in range(act.shape[0]):
                start = self._commanded[key][b]
                path = self.retime(key, start, act[b, :ARM_DOF])
                self.planning_calls[b] += 1
                if path is None:
                    self.planning_failures[b] += 1
                    path = start[None]
                paths[key].append(path)
                self._commanded[key][b] = path[-1]
        n_steps = max(len(p) for ps in paths.values() for p in ps)
        out = []
        for t in range(n_steps):
            step = {}
            for key in self.keys:
                joints = np.stack([p[min(t, len(p) - 1)] for p in paths[key]])
                step[key] = np.concatenate([joints, grippers[key][:, None]], axis=1).astype(np.float32)
            out.append(step)
        return out


def make_execution(name: str, env: Any) -> Execution:
    """The :class:`Execution` called ``name`` ('direct' or 'topp') for ``env``."""
    if name == "direct":
        return Execution(env)
    if name == "topp":
        return ToppExecution(env)
    raise ValueError(f"unknown execution {name!r}; use 'direct' or 'topp'")


__all__ = [
    "Execution",
    "ExecutionName",
    "ToppExecution",
    "agent_handles",
    "as_agent_actions",
    "make_execution",
    "to_env_action",
]
