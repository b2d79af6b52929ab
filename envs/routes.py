"""What each policy sees and drives: routes from env agents to policies, and the helpers that build a policy's
observation from the env's observation dict and split its action back into the env's action dict.

A route is an :class:`AgentRoute` (the policy, its cameras, its state source) under an agent key (``"panda-0"``),
or under a tuple of agent keys for a shared policy that drives those arms together: its state is their
:func:`agent_state` concatenated in that order, its action their actions concatenated (8 numbers each).
:func:`default_routes` builds RoboFactory's routing, or the shared one, from the checkpoints' architecture records
(``rf_dp_agents.architecture``); :func:`policy_input` and :func:`split_action` do the same for a loop of your own.

The state definition shared by the datasets, the demo converter and the router is :func:`agent_state`:
the 7 measured arm joint angles (rad) followed by the gripper opening, the sum of the two finger joint
positions (m, 0 to 0.08): 8 values.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence, Union

import numpy as np
import torch

from rf_dp_agents.architecture import ArchitectureRecord, own_camera, policy_record

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


RouteKey = Union[str, tuple]
"""An agent key, or a tuple of agent keys driven by one shared policy."""


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


def _record(policy: Any) -> ArchitectureRecord | None:
    return policy_record(getattr(policy, "metadata", None), f"the {type(policy).__name__}'s metadata")


def policy_agents(policy: Any) -> list[str]:
    """The env agent keys ``policy`` drives, in the order of its state and action, from its checkpoint's
    architecture record; a policy without one is taken as one arm's policy (an error here: name its agent)."""
    record = _record(policy)
    if record is None:
        raise ValueError(
            f"{type(policy).__name__} has no architecture record in its metadata (checkpoint saved without one): "
            "pass the agent keys it drives, e.g. agents=['panda-0']"
        )
    return list(record.agents)


def is_shared(policy: Any) -> bool:
    """Whether ``policy`` drives several arms (a shared architecture's checkpoint)."""
    record = _record(policy)
    return record is not None and record.architecture.shared


def default_routes(env: Any, policies: Sequence[Any] | Mapping[str, Any]) -> dict[RouteKey, AgentRoute]:
    """RoboFactory's routing: agent i's policy sees ``head_camera_agent<i>`` and its own joint state; or, for one
    shared policy, every arm under one route keyed by the tuple of the env's agent keys.

    A policy's cameras come from its checkpoint's architecture record; without one, by the dataset naming
    convention: policy key ``img`` is the agent's own ``head_camera_agent<i>``, ``img_<camera>`` is the env camera
    ``<camera>`` (``img_head_camera_global``). A policy trained for another arm count is an error naming both counts.
    """
    keys = env_agent_keys(env)
    if isinstance(policies, Mapping):
        items = [(k, policies[k]) for k in keys if k in policies]
        if len(items) != len(policies):
            raise ValueError(f"policies are keyed {sorted(policies)} but the env's agents are {keys}")
    else:
        policies = list(policies)
        if any(is_shared(p) for p in policies):
            if len(policies) != 1:
                raise ValueError(f"a shared policy drives every arm alone; got {len(policies)} policies")
            agents = policy_agents(policies[0])
            if len(agents) != len(keys) or agents != keys:
                raise ValueError(
                    f"the shared policy drives {len(agents)} arms {agents} but the env has {len(keys)} arms {keys}"
                )
            return {tuple(keys): AgentRoute(policies[0], cameras=policy_cameras(policies[0], None))}
        if len(policies) != len(keys):
            raise ValueError(f"{len(policies)} policies for an env with {len(keys)} agents {keys}")
        items = list(zip(keys, policies))
    routes: dict[RouteKey, AgentRoute] = {}
    for key, policy in items:
        record = _record(policy)
        if record is not None and (record.num_agents != len(keys) or list(record.agents) != [key]):
            raise ValueError(
                f"agent {key!r}: its policy was trained for agent {record.agents[0]!r} of a task with "
                f"{record.num_agents} arms; the env has {len(keys)} arms {keys}"
            )
        routes[key] = AgentRoute(policy, cameras=policy_cameras(policy, own_camera(keys.index(key))))
    return routes


def policy_cameras(policy: Any, own_camera: str | None) -> dict[str, str]:
    """Map each of the policy's camera keys to an env camera: the checkpoint's architecture record says; without
    one, ``img`` (or a policy's only camera) -> ``own_camera``, ``img_<cam>`` -> ``<cam>``, any other key -> the
    env camera of that name."""
    record = _record(policy)
    keys = tuple(policy.config.camera_keys)
    if record is not None:
        if set(record.cameras) != set(keys):
            raise ValueError(f"the policy's camera_keys {list(keys)} differ from its architecture record's "
                             f"{list(record.cameras)}")
        return {key: record.cameras[key] for key in keys}
    mapping = {}
    for key in keys:
        if key == "img" or len(keys) == 1:
            if own_camera is None:
                raise ValueError(f"camera key {key!r} is an agent's own camera: name the agent")
            mapping[key] = own_camera
        else:
            mapping[key] = key[len("img_"):] if key.startswith("img_") else key
    return mapping


def concat_states(states: Sequence[Any]) -> Any:
    """The arms' states side by side on the last axis (torch in, torch out; else NumPy float32)."""
    if len(states) == 1:
        return states[0]
    if all(isinstance(s, torch.Tensor) for s in states):
        return torch.cat(list(states), dim=-1)
    return np.concatenate([np.asarray(s.cpu() if isinstance(s, torch.Tensor) else s, np.float32) for s in states], -1)


def policy_input(policy: Any, obs: Mapping[str, Any], agents: Sequence[str] | None = None) -> dict[str, Any]:
    """The observation ``policy.predict`` takes, built from the env's observation dict: each camera key's RGB
    ``(B, H, W, 3)`` and the state of the arms it drives (``agents``, default: its architecture record's),
    concatenated in order. Works for a shared policy and for one arm's policy alike."""
    agents = list(agents) if agents is not None else policy_agents(policy)
    own = own_camera(int(agents[0].rsplit("-", 1)[-1])) if len(agents) == 1 else None
    sensors = obs["sensor_data"]
    out: dict[str, Any] = {}
    for key, cam in policy_cameras(policy, own).items():
        if cam not in sensors:
            raise KeyError(f"camera {cam!r} (policy key {key!r}) is missing from the observation; it has {sorted(sensors)}")
        out[key] = sensors[cam]["rgb"]
    out[policy.config.state_key] = concat_states([agent_state(obs, a) for a in agents])
    return out


def split_action(action: Any, agents: Sequence[str], dims: Sequence[int] | None = None) -> dict[str, Any]:
    """A shared policy's action ``(..., sum(dims))`` as the env's action dict ``{agent: (..., dim)}``, in agent
    order (``dims`` default: 8 per agent)."""
    dims = list(dims) if dims is not None else [8] * len(agents)
    if len(dims) != len(agents) or action.shape[-1] != sum(dims):
        raise ValueError(f"an action of shape {tuple(action.shape)} does not split into {len(agents)} arms of {dims}")
    out, start = {}, 0
    for agent, dim in zip(agents, dims):
        out[agent] = action[..., start : start + dim]
        start += dim
    return out


__all__ = [
    "STATE_DIM",
    "AgentRoute",
    "RouteKey",
    "agent_qpos",
    "agent_state",
    "concat_states",
    "default_routes",
    "env_agent_keys",
    "is_shared",
    "policy_agents",
    "policy_cameras",
    "policy_input",
    "split_action",
]
