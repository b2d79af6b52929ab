"""Helpers of the per-task tests of the RoboFactory rebuilds: the reference layout checks and one planned demo,
replayed with a tiny camera and converted to zarr."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pytest
import torch

from envs.solvers.runner import AttemptResult, DemoRunner
from rf_dp_agents.data.convert import convert_agent, list_episodes
from rf_dp_agents.data.replay_buffer import ReplayBuffer

CAM_W, CAM_H = 64, 48


@dataclass
class PlannedDemo:
    """A solved seed: the runner (its state-only env holds the solver's final state), the plan's outcome and
    actions, the replay's flags and the agent-0 zarr dataset converted from the recorded episode."""

    runner: DemoRunner
    seed: int
    result: AttemptResult
    actions: list
    replay_success: bool
    replay_strict: bool | None
    buffer: ReplayBuffer | None

    @property
    def final_env(self) -> Any:
        """The unwrapped env the solver ran in, at its final state."""
        return self.runner.plan_env.unwrapped


def plan_record_convert(task: str, seed: int, out_dir: Path) -> PlannedDemo:
    """Plan ``seed`` without images, replay it recording ``head_camera_agent0`` at 64x48, convert agent 0."""
    runner = DemoRunner(task, camera_width=CAM_W, camera_height=CAM_H, cameras=["head_camera_agent0"])
    result, actions = runner.plan(seed)
    demo = PlannedDemo(runner, seed, result, actions, False, None, None)
    if result.outcome != "success":
        return demo
    h5 = out_dir / task / f"seed_{seed:06d}.h5"
    h5.parent.mkdir(parents=True, exist_ok=True)
    demo.replay_success, demo.replay_strict = runner.replayer.record(seed, actions, h5)
    if demo.replay_success:
        path = convert_agent(list_episodes(h5.parent), out_dir / f"{task}_Agent0_1.zarr", agent_id=0, progress=False)
        demo.buffer = ReplayBuffer.open(path)
    return demo


def check_zarr(demo: PlannedDemo) -> None:
    """The converted dataset holds one episode of the demo's length with the documented keys and shapes."""
    buf = demo.buffer
    assert buf is not None, f"seed {demo.seed}: {demo.result.outcome} {demo.result.message}"
    n = len(demo.actions)
    np.testing.assert_array_equal(buf.episode_ends, [n])
    img = buf["img"][:]
    assert img.shape == (n, 3, CAM_H, CAM_W) and img.dtype == np.uint8 and img.std() > 5
    assert buf["state"].shape == (n, 8) and buf["action"].shape == (n, 8)
    np.testing.assert_allclose(buf["action"][:], np.stack([a["panda-0"] for a in demo.actions]), atol=1e-6)


def check_arm_bases(env: Any, bases: Sequence[tuple[float, float, float]], joint4: Sequence[float]) -> None:
    """Arm i stands at ``bases[i]`` = (x, y, yaw) and starts with its fourth joint at ``joint4[i]`` (no noise)."""
    arms = env.arms
    assert len(arms) == len(bases)
    for arm, (x, y, yaw), j4 in zip(arms, bases, joint4):
        pose = arm.robot.pose
        np.testing.assert_allclose(pose.p[0].numpy(), [x, y, 0.0], atol=1e-5)
        q = pose.q[0].numpy()
        expected = np.array([math.cos(yaw / 2), 0.0, 0.0, math.sin(yaw / 2)])
        assert min(np.abs(q - expected).max(), np.abs(q + expected).max()) < 1e-5, (q, yaw)
        qpos = arm.robot.get_qpos()[0].numpy()
        others = [0.0, math.pi / 8, 0.0, 0.0, 3 * math.pi / 4, math.pi / 4]  # joints 1-3, 5-7: RoboFactory's
        np.testing.assert_allclose(qpos[[0, 1, 2, 4, 5, 6]], others, atol=1e-4)
        assert qpos[3] == pytest.approx(j4, abs=1e-4)


def check_camera_positions(env: Any, positions: dict[str, Sequence[float]]) -> None:
    """Each named sensor camera sits at the given world position."""
    for name, p in positions.items():
        got = env._sensors[name].camera.global_pose.p[0].numpy()
        np.testing.assert_allclose(got, p, atol=1e-4, err_msg=name)


def state_after_reset(env: Any, seed: int) -> torch.Tensor:
    """The flat simulator state right after ``reset(seed=seed)``."""
    env.reset(seed=seed)
    return env.unwrapped.get_state().clone()


__all__ = [
    "CAM_H",
    "CAM_W",
    "PlannedDemo",
    "check_arm_bases",
    "check_camera_positions",
    "check_zarr",
    "plan_record_convert",
    "state_after_reset",
]
