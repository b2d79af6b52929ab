"""Recording demonstrations (open-loop replay with cameras) as ManiSkill-style ``.h5`` + ``.json`` pairs,
and reading them back.

The h5 layout (``traj_<k>`` groups with per-agent actions, per-agent qpos and state, per-camera RGB and
success flags) is owned by :mod:`rf_dp_agents.data.convert` (the library reads demos without a simulator, and
this package needs one), so this module writes with its keys and re-exports its readers.
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
    TRAJ_PREFIX,
    EpisodeRef,
    action_key,
    episode_agents,
    list_episodes,
    qpos_key,
    read_actions,
    read_agent_episode,
    read_seed,
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
            g = f.create_group(f"{TRAJ_PREFIX}0")
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


def tile_frames(recorder: EpisodeRecorder) -> np.ndarray:
    """All cameras side by side per step: uint8 (L+1, H, W * n_cameras, 3)."""
    return np.concatenate([np.stack(recorder.rgb[cam]) for cam in recorder.cameras], axis=2)


def render_cameras(base_env: Any, cameras: Sequence[str]) -> dict[str, np.ndarray]:
    """Render ``cameras`` of a ManiSkill env (CPU backend, env 0) now: uint8 (H, W, 3) per camera.

    Gives the same pixels as ``obs_mode='rgb'`` but renders only the cameras named.
    """
    for obj in getattr(base_env, "_hidden_objects", []):
        obj.hide_visual()
    base_env.scene.update_render(update_sensors=True, update_human_render_cameras=False)
    sensors = [base_env._sensors[cam] for cam in cameras]
    for sensor in sensors:
        sensor.capture()
    frames = {}
    for cam, sensor in zip(cameras, sensors):
        rgb = sensor.get_obs(rgb=True, depth=False, position=False, segmentation=False)["rgb"]
        frames[cam] = rgb[0].cpu().numpy().astype(np.uint8)
    return frames


def write_video(path: str | Path, frames: np.ndarray, fps: int = 20) -> Path:
    """Write uint8 frames (T, H, W, 3) to an mp4 under a temporary name, then rename."""
    import imageio.v2 as imageio

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".tmp-{os.getpid()}-{path.name}")
    try:
        imageio.mimwrite(tmp, list(frames), fps=fps, macro_block_size=1)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def env_agent_keys(base_env: Any) -> list[str]:
    """Agent keys of a ManiSkill env: its MultiAgent keys, or ``panda-0`` for a one-arm env."""
    agent = base_env.agent
    return list(agent.agents_dict) if hasattr(agent, "agents_dict") else ["panda-0"]


def _final_flag(info: Mapping[str, Any], key: str) -> bool | None:
    return bool(_np(info[key]).reshape(-1)[0]) if key in info else None


class EpisodeReplayer:
    """Replays action sequences open-loop from their seeds on a CPU env of one task, recording as it goes.

    Only the cameras asked for are rendered (all of the task's by default), after the reset and after
    every step; qpos is read from the arms directly, so the env itself runs with ``obs_mode='none'``.
    Needs the simulator but not the motion planner.
    """

    def __init__(
        self,
        task: str,
        camera_width: int = 320,
        camera_height: int = 240,
        cameras: Sequence[str] | None = None,
        env_kwargs: Mapping[str, Any] | None = None,
    ) -> None:
        import gymnasium as gym

        import envs  # noqa: F401  (registers the -rf tasks)

        self.task = task
        self.env_kwargs = dict(camera_width=int(camera_width), camera_height=int(camera_height), **dict(env_kwargs or {}))
        self.env = gym.make(task, obs_mode="none", sim_backend="cpu", **self.env_kwargs)
        sensors = list(self.env.unwrapped._sensors)
        missing = [cam for cam in cameras or () if cam not in sensors]
        if missing:
            raise KeyError(f"{task}: cameras {missing} do not exist (the task has {sensors})")
        self.cameras = list(cameras) if cameras else sensors
        self.agent_keys = env_agent_keys(self.env.unwrapped)
        cap = getattr(self.env, "_max_episode_steps", None) or self.env.spec.max_episode_steps
        self.max_episode_steps = int(cap) if cap else None

    def replay(
        self, seed: int, actions: Sequence[Mapping[str, np.ndarray]], env: Any = None, render: bool = True
    ) -> tuple[EpisodeRecorder, dict]:
        """Reset ``env`` (this replayer's by default) to ``seed``, step ``actions``; returns the recording and last info."""
        env = env if env is not None else self.env
        base = env.unwrapped
        env.reset(seed=seed, options={"reconfigure": True})  # a fresh scene: PhysX keeps state over plain resets
        keys = env_agent_keys(base)
        multi = hasattr(base.agent, "agents_dict")
        arms = list(base.agent.agents) if multi else [base.agent]
        cameras = self.cameras if render else []
        recorder = EpisodeRecorder(agent_keys=keys, cameras=tuple(cameras))

        def observe() -> None:
            qpos = {key: arm.robot.get_qpos()[0] for key, arm in zip(keys, arms)}
            recorder.add_obs(qpos, render_cameras(base, cameras) if cameras else {})

        observe()
        info: dict = {}
        for action in actions:
            _, _, _, _, info = env.step(dict(action) if multi else action[keys[0]])
            observe()
            recorder.add_step(action, info)
        return recorder, info

    def record(
        self,
        seed: int,
        actions: Sequence[Mapping[str, np.ndarray]],
        h5_path: str | Path,
        video_path: str | Path | None = None,
        render: bool = True,
        extra: Mapping[str, Any] | None = None,
    ) -> tuple[bool, bool | None]:
        """Replay and, if the episode succeeds, write it (and a video); returns (success, success_strict)."""
        recorder, info = self.replay(seed, actions, render=render)
        success, strict = bool(_final_flag(info, "success")), _final_flag(info, "success_strict")
        if not success:
            return False, strict
        kwargs = self.env_kwargs | {"obs_mode": "rgb" if render else "none", "control_mode": "pd_joint_pos", "sim_backend": "cpu"}
        write_episode(
            h5_path, recorder, env_id=self.task, seed=seed, env_kwargs=kwargs,
            max_episode_steps=self.max_episode_steps, extra=extra,
        )
        if video_path is not None and render and recorder.cameras:
            write_video(video_path, tile_frames(recorder))
        return True, strict

    def close(self) -> None:
        """Close the env."""
        self.env.close()


__all__ = [
    "EpisodeRecorder",
    "EpisodeReplayer",
    "env_agent_keys",
    "render_cameras",
    "tile_frames",
    "write_video",
    "EpisodeRef",
    "write_episode",
    "list_episodes",
    "episode_agents",
    "read_agent_episode",
    "read_actions",
    "read_seed",
]
