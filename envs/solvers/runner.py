"""Turn env seeds into recorded demonstrations: plan without rendering, then replay with cameras and save.

:class:`DemoRunner` holds two envs of one task on the CPU backend. For each seed it runs the task's solver on
a state-only env (``obs_mode='none'``: no rendering is spent on failed plans), and, when the episode
succeeds within the task's step cap, replays the recorded actions open-loop from the same seed on a second
env, rendering only the chosen cameras after every step (rendering dominates the cost on a CPU renderer),
and recording each arm's joints and the success flags. Only an episode that succeeds again on replay is
written (``envs.demo_io``), so the data is exactly what the env does.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import gymnasium as gym
import numpy as np

import envs  # noqa: F401  (registers the -rf tasks)
from envs.demo_io import EpisodeRecorder, write_episode
from envs.solvers import get_solver
from envs.solvers.planner import GraspFailed, MultiArmPlanner, PlanningFailed, success_flag

OUTCOMES = ("success", "planning failed", "grasp failed", "task not solved", "replay failed", "error")
"""Possible outcomes of one attempt (the failure causes the generator reports)."""


@dataclass
class AttemptResult:
    """What happened to one seed."""

    seed: int
    outcome: str
    message: str = ""
    steps: int = 0
    plan_seconds: float = 0.0
    record_seconds: float = 0.0
    success_strict: bool | None = None
    path: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON form."""
        return asdict(self)


def tile_frames(recorder: EpisodeRecorder) -> np.ndarray:
    """All cameras side by side per step: uint8 (L+1, H, W * n_cameras, 3)."""
    return np.concatenate([np.stack(recorder.rgb[cam]) for cam in recorder.cameras], axis=2)


class DemoRunner:
    """Plans, replays and records demonstrations of one task (CPU simulation backend)."""

    def __init__(
        self,
        task: str,
        camera_width: int = 320,
        camera_height: int = 240,
        cameras: Sequence[str] | None = None,
        env_kwargs: dict[str, Any] | None = None,
    ) -> None:
        self.task = task
        self.cameras = tuple(cameras) if cameras else None
        self.solver = get_solver(task)
        self.env_kwargs = dict(env_kwargs or {})
        self.record_kwargs = dict(camera_width=int(camera_width), camera_height=int(camera_height), **self.env_kwargs)
        self.plan_env = gym.make(task, obs_mode="none", sim_backend="cpu", **self.env_kwargs)
        self.planner = MultiArmPlanner(self.plan_env)
        self._record_env: Any = None
        cap = getattr(self.plan_env, "_max_episode_steps", None) or self.plan_env.spec.max_episode_steps
        self.max_episode_steps = int(cap) if cap else None

    @property
    def record_env(self) -> Any:
        """The rendering env (built on first use)."""
        if self._record_env is None:
            env = gym.make(self.task, obs_mode="none", sim_backend="cpu", **self.record_kwargs)
            sensors = list(env.unwrapped._sensors)
            missing = [cam for cam in self.cameras or () if cam not in sensors]
            if missing:
                raise KeyError(f"{self.task}: cameras {missing} do not exist (the task has {sensors})")
            self._record_env = env
        return self._record_env

    def camera_names(self) -> list[str]:
        """The cameras recorded: those asked for, else every camera of the task."""
        return list(self.cameras or self.record_env.unwrapped._sensors)

    def plan(self, seed: int) -> tuple[AttemptResult, list[dict[str, np.ndarray]]]:
        """Solve ``seed`` on the state-only env; returns the outcome and the actions sent."""
        start = time.perf_counter()
        self.plan_env.reset(seed=seed)
        self.planner.begin_episode()
        result = AttemptResult(seed=seed, outcome="success")
        try:
            info = self.solver(self.plan_env, self.planner)
            if not success_flag(info):
                result.outcome, result.message = "task not solved", "success is false at the end of the plan"
            elif self.max_episode_steps and self.planner.elapsed_steps > self.max_episode_steps:
                result.outcome = "task not solved"
                result.message = f"{self.planner.elapsed_steps} steps exceed the cap of {self.max_episode_steps}"
            result.success_strict = success_flag(info, "success_strict") if "success_strict" in info else None
        except PlanningFailed as exc:
            result.outcome, result.message = "planning failed", str(exc)
        except GraspFailed as exc:
            result.outcome, result.message = "grasp failed", str(exc)
        except Exception as exc:  # noqa: BLE001  (a crash in mplib or the sim costs one seed, not the run)
            result.outcome, result.message = "error", f"{type(exc).__name__}: {exc}"
        result.steps = self.planner.elapsed_steps
        result.plan_seconds = time.perf_counter() - start
        return result, list(self.planner.actions)

    def replay(
        self, seed: int, actions: Sequence[dict[str, np.ndarray]], env: Any = None, render: bool = True
    ) -> tuple[EpisodeRecorder, dict]:
        """Reset ``env`` (the recording env by default) to ``seed`` and step ``actions`` open-loop, recording.

        With ``render`` the chosen cameras are rendered after the reset and after every step.
        """
        env = env if env is not None else self.record_env
        base = env.unwrapped
        env.reset(seed=seed)
        keys = self.planner.agent_keys
        agents = list(base.agent.agents) if self.planner.multi_agent else [base.agent]
        cameras = self.camera_names() if render else []
        recorder = EpisodeRecorder(agent_keys=keys, cameras=tuple(cameras))

        def observe() -> None:
            qpos = {key: ag.robot.get_qpos()[0] for key, ag in zip(keys, agents)}
            recorder.add_obs(qpos, render_cameras(base, cameras) if cameras else {})

        observe()
        info: dict = {}
        for action in actions:
            _, _, _, _, info = env.step(action if self.planner.multi_agent else action[keys[0]])
            observe()
            recorder.add_step(action, info)
        return recorder, info

    def attempt(self, seed: int, h5_path: str | Path, video_path: str | Path | None = None) -> AttemptResult:
        """Plan ``seed``; if it succeeds, replay with cameras and write ``h5_path`` (+ .json, + video)."""
        result, actions = self.plan(seed)
        if result.outcome != "success":
            return result
        start = time.perf_counter()
        recorder, info = self.replay(seed, actions)
        result.record_seconds = time.perf_counter() - start
        if not success_flag(info):
            result.outcome = "replay failed"
            result.message = "the open-loop replay of the planned actions did not succeed"
            return result
        if "success_strict" in info:
            result.success_strict = success_flag(info, "success_strict")
        extra = {"planner_steps": result.steps, "success_strict_final": result.success_strict}
        write_episode(
            h5_path,
            recorder,
            env_id=self.task,
            seed=seed,
            env_kwargs=self.record_kwargs | {"obs_mode": "rgb", "control_mode": "pd_joint_pos", "sim_backend": "cpu"},
            max_episode_steps=self.max_episode_steps,
            extra=extra,
        )
        result.path = str(h5_path)
        if video_path is not None:
            write_video(video_path, tile_frames(recorder))
        result.record_seconds = time.perf_counter() - start
        return result

    def close(self) -> None:
        """Close both envs."""
        self.plan_env.close()
        if self._record_env is not None:
            self._record_env.close()


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
    import os

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


__all__ = ["AttemptResult", "DemoRunner", "OUTCOMES", "render_cameras", "tile_frames", "write_video"]
