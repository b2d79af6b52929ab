"""Writing motion-planned demonstrations as ManiSkill-style ``.h5`` + ``.json`` pairs, and reading them back.

The h5 layout (``traj_<k>`` groups with per-agent actions, per-agent qpos and state, per-camera RGB and
success flags) is defined once, in :mod:`rf_dp_agents.data.convert`, whose readers are re-exported here.
The JSON sidecar follows ManiSkill's trajectory format: ``env_info`` (env id, kwargs, episode cap) and an
``episodes`` list (episode id, seed, reset kwargs, control mode, length, success flags). Both files are
written under a temporary name and renamed, so a crash never leaves a half-written demonstration.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import h5py
import numpy as np

from envs.router import agent_state
from rf_dp_agents.data.convert import (
    EpisodeRef,
    action_key,
    episode_agents,
    list_episodes,
    qpos_key,
    read_agent_episode,
    rgb_key,
    state_key,
)

IMAGE_COMPRESSION = {"compression": "gzip", "compression_opts": 1}
"""h5 compression of camera frames (gzip level 1: portable and fast; frames are chunked one per step)."""


def _np(x: Any) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    return np.asarray(x)


@dataclass
class EpisodeRecorder:
    """Collects one episode's observations, actions and success flags step by step, in memory.

    ``state_fn`` maps measured qpos (9,) to the policy state (8,) (default: the router's
    :func:`envs.router.agent_state`, so demos and rollouts share one definition); ``cameras`` names the
    cameras to keep (those of the first observation when empty).
    """

    agent_keys: Sequence[str]
    cameras: Sequence[str] = ()
    state_fn: Callable[[np.ndarray], np.ndarray] = agent_state
    qpos: dict[str, list[np.ndarray]] = field(default_factory=dict)
    rgb: dict[str, list[np.ndarray]] = field(default_factory=dict)
    actions: dict[str, list[np.ndarray]] = field(default_factory=dict)
    flags: dict[str, list[bool]] = field(default_factory=dict)

    def add_obs(self, qpos: Mapping[str, Any], images: Mapping[str, Any]) -> None:
        """Record one observation: measured qpos (9,) per agent key and an RGB frame (H, W, 3) per camera."""
        for key in self.agent_keys:
            if key not in qpos:
                raise KeyError(f"agent {key!r} missing from the qpos given (have {sorted(qpos)})")
            self.qpos.setdefault(key, []).append(_np(qpos[key]).reshape(-1).astype(np.float32))
        if not self.cameras:
            self.cameras = tuple(images)
        for cam in self.cameras:
            if cam not in images:
                raise KeyError(f"camera {cam!r} missing from the images given (have {sorted(images)})")
            frame = _np(images[cam])
            self.rgb.setdefault(cam, []).append(frame.reshape(frame.shape[-3:]).astype(np.uint8))

    def add_step(self, action: Mapping[str, np.ndarray], info: Mapping[str, Any]) -> None:
        """Record the action taken and the success flags of the info returned."""
        for key in self.agent_keys:
            self.actions.setdefault(key, []).append(np.asarray(action[key], dtype=np.float32))
        for name in ("success", "success_strict"):
            if name in info:
                self.flags.setdefault(name, []).append(bool(_np(info[name]).reshape(-1)[0]))

    @property
    def length(self) -> int:
        """Number of actions recorded."""
        return len(next(iter(self.actions.values()), []))


def _tmp(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")


def _atomic_json(path: Path, payload: Mapping[str, Any]) -> None:
    tmp = _tmp(path)
    with open(tmp, "w") as f:
        json.dump(payload, f, indent=2)
    os.replace(tmp, path)


def write_episode(
    h5_path: str | Path,
    recording: EpisodeRecorder,
    env_id: str,
    seed: int,
    env_kwargs: Mapping[str, Any] | None = None,
    max_episode_steps: int | None = None,
    extra: Mapping[str, Any] | None = None,
) -> Path:
    """Write one recorded episode to ``h5_path`` (group ``traj_0``) and its ``.json`` sidecar; returns the h5 path."""
    h5_path = Path(h5_path)
    h5_path.parent.mkdir(parents=True, exist_ok=True)
    length = recording.length
    if length < 1:
        raise ValueError(f"{h5_path}: the recording holds no steps")
    n_obs = len(next(iter(recording.qpos.values()), []))
    if n_obs != length + 1:
        raise ValueError(f"{h5_path}: {n_obs} observations for {length} actions (expected {length + 1})")
    tmp = _tmp(h5_path)
    try:
        with h5py.File(tmp, "w") as f:
            f.attrs["env_id"] = env_id
            g = f.create_group("traj_0")
            g.attrs["seed"] = int(seed)
            g.attrs["elapsed_steps"] = int(length)
            g.attrs["agents"] = json.dumps(list(recording.agent_keys))
            g.attrs["cameras"] = json.dumps(list(recording.cameras))
            for key in recording.agent_keys:
                g.create_dataset(action_key(key), data=np.stack(recording.actions[key]).astype(np.float32))
                qpos = np.stack(recording.qpos[key]).astype(np.float32)
                g.create_dataset(qpos_key(key), data=qpos)
                state = np.stack([recording.state_fn(q) for q in qpos]).astype(np.float32)
                g.create_dataset(state_key(key), data=state)
            for cam in recording.cameras:
                frames = np.stack(recording.rgb[cam])
                g.create_dataset(rgb_key(cam), data=frames, chunks=(1, *frames.shape[1:]), **IMAGE_COMPRESSION)
            for name, values in recording.flags.items():
                g.create_dataset(name, data=np.asarray(values, dtype=bool))
        os.replace(tmp, h5_path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    flags = {name: bool(values[-1]) for name, values in recording.flags.items() if values}
    episode = {
        "episode_id": 0,
        "episode_seed": int(seed),
        "reset_kwargs": {"seed": int(seed)},
        "control_mode": "pd_joint_pos",
        "elapsed_steps": int(length),
        "agents": list(recording.agent_keys),
        "cameras": list(recording.cameras),
        **flags,
        **dict(extra or {}),
    }
    payload = {
        "env_info": {
            "env_id": env_id,
            "env_kwargs": dict(env_kwargs or {}),
            "max_episode_steps": max_episode_steps,
        },
        "source_type": "motionplanning",
        "source_desc": "mplib motion planning (envs.solvers), successful episodes only",
        "episodes": [episode],
    }
    _atomic_json(h5_path.with_suffix(".json"), payload)
    return h5_path


def read_actions(ref: EpisodeRef) -> list[dict[str, np.ndarray]]:
    """The per-step action dicts (agent key -> (8,)) of an episode, for open-loop replay."""
    agents = episode_agents(ref)
    with h5py.File(ref.path, "r") as f:
        per_agent = {key: f[ref.traj][action_key(key)][()] for key in agents}
    length = len(next(iter(per_agent.values())))
    return [{key: per_agent[key][t] for key in agents} for t in range(length)]


def read_seed(ref: EpisodeRef) -> int:
    """The env seed an episode was recorded from."""
    with h5py.File(ref.path, "r") as f:
        return int(f[ref.traj].attrs["seed"])


__all__ = [
    "EpisodeRecorder",
    "EpisodeRef",
    "write_episode",
    "list_episodes",
    "episode_agents",
    "read_agent_episode",
    "read_actions",
    "read_seed",
]
