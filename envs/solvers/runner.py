"""Turn env seeds into recorded demonstrations: plan without rendering, then replay with cameras and save.

:class:`DemoRunner` holds two envs of one task on the CPU backend. For each seed it runs the task's solver on
a state-only env (``obs_mode='none'``: no rendering is spent on failed plans), and, when the episode
succeeds within the task's step cap, replays the actions open-loop from the same seed with an
:class:`~envs.demo_io.EpisodeReplayer`, which renders only the chosen cameras (rendering dominates the
cost on a CPU renderer) and records each arm's joints and the success flags. Only an episode that
succeeds again on replay is written, so the data is exactly what the env does.

Every episode starts from a rebuilt scene (``reset`` with ``reconfigure=True``): after a plain reset PhysX keeps
state from the previous episode (LiftBarrier-rf joints differ by 2e-3 rad after 10 steps), so a seed's plan and
data would depend on the seeds its worker ran before. The rebuild costs about 0.7 s per reset on a loaded
2-core machine.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Sequence

import gymnasium as gym
import numpy as np

import envs  # noqa: F401  (registers the -rf tasks)
from envs.demo_io import EpisodeRecorder, EpisodeReplayer
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


class DemoRunner:
    """Plans demonstrations of one task on a state-only env and records them with an :class:`EpisodeReplayer`."""

    def __init__(
        self,
        task: str,
        camera_width: int = 320,
        camera_height: int = 240,
        cameras: Sequence[str] | None = None,
        env_kwargs: dict[str, Any] | None = None,
    ) -> None:
        self.task = task
        self.solver = get_solver(task)
        self.env_kwargs = dict(env_kwargs or {})
        self.plan_env = gym.make(task, obs_mode="none", sim_backend="cpu", **self.env_kwargs)
        self.planner = MultiArmPlanner(self.plan_env)
        self.replayer = EpisodeReplayer(task, camera_width, camera_height, cameras, self.env_kwargs)
        self.max_episode_steps = self.replayer.max_episode_steps

    def plan(self, seed: int) -> tuple[AttemptResult, list[dict[str, np.ndarray]]]:
        """Solve ``seed`` on the state-only env; returns the outcome and the actions sent."""
        start = time.perf_counter()
        # A rebuilt scene: the episode of a seed is then the same whichever seeds this env ran before (PhysX keeps
        # state across plain resets); the new scene has new agents, so the planner is rebuilt too.
        self.plan_env.reset(seed=seed, options={"reconfigure": True})
        self.planner = MultiArmPlanner(self.plan_env)
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
        """Replay ``actions`` open-loop from ``seed`` (see :meth:`EpisodeReplayer.replay`)."""
        return self.replayer.replay(seed, actions, env=env, render=render)

    def attempt(
        self, seed: int, h5_path: str | Path, video_path: str | Path | None = None, render: bool = True
    ) -> AttemptResult:
        """Plan ``seed``; if it succeeds, replay (with cameras when ``render``) and write ``h5_path`` (+ .json, video)."""
        result, actions = self.plan(seed)
        if result.outcome != "success":
            return result
        start = time.perf_counter()
        extra = {"planner_steps": result.steps}
        ok, strict = self.replayer.record(seed, actions, h5_path, video_path, render=render, extra=extra)
        result.record_seconds = time.perf_counter() - start
        result.success_strict = strict
        if not ok:
            result.outcome = "replay failed"
            result.message = "the open-loop replay of the planned actions did not succeed"
            return result
        result.path = str(h5_path)
        return result

    def close(self) -> None:
        """Close both envs."""
        self.plan_env.close()
        self.replayer.close()


__all__ = ["AttemptResult", "DemoRunner", "OUTCOMES"]
