"""Checks shared by the per-task test files of the -rf tasks rebuilt from primitives (a helper, not a test module).

Numbers the tests compare against (base poses, camera placements, ranges) come from RoboFactory's task configs,
written out in each test file, never read back from the env's own attributes.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from envs.demo_io import list_episodes
from envs.solvers.runner import AttemptResult, DemoRunner
from rf_dp_agents.data.convert import convert_agent
from rf_dp_agents.data.replay_buffer import ReplayBuffer

DEMO_W, DEMO_H = 64, 48
"""Camera size of the planned test demos."""


def yaw_quat(yaw: float) -> torch.Tensor:
    """(w, x, y, z) of a rotation by ``yaw`` about +z (RoboFactory's base orientations are Euler (0, 0, yaw))."""
    return torch.tensor([math.cos(yaw / 2), 0.0, 0.0, math.sin(yaw / 2)])


def assert_base_pose(arm: Any, xyz: Sequence[float], yaw: float) -> None:
    """The arm's base stands at ``xyz`` with heading ``yaw`` (quaternion sign either way)."""
    pose = arm.robot.pose
    assert torch.allclose(pose.p[0], torch.tensor(xyz, dtype=torch.float32), atol=1e-5), pose.p
    q, want = pose.q[0], yaw_quat(yaw)
    assert torch.allclose(q, want, atol=1e-5) or torch.allclose(q, -want, atol=1e-5), (q, want)


def camera_pose(env: Any, name: str) -> tuple[np.ndarray, np.ndarray]:
    """World position and viewing direction (SAPIEN cameras look along their local +x) of sensor ``name``."""
    pose = env.unwrapped._sensors[name].camera.global_pose
    T = pose.to_transformation_matrix()[0].cpu().numpy()
    return T[:3, 3], T[:3, 0]


def assert_camera_looks(env: Any, name: str, eye: Sequence[float], target: Sequence[float]) -> None:
    """Sensor ``name`` sits at ``eye`` and looks at ``target`` (within 1 mm and 0.5 degree)."""
    p, forward = camera_pose(env, name)
    np.testing.assert_allclose(p, eye, atol=1e-3)
    want = np.asarray(target, dtype=float) - np.asarray(eye, dtype=float)
    cos = float(forward @ want / np.linalg.norm(want))
    assert math.degrees(math.acos(min(1.0, cos))) < 0.5, (name, forward, want)


def assert_camera_format(env: Any, names: set[str], width: int, height: int) -> None:
    """The env's sensor cameras are exactly ``names``, each ``width`` x ``height`` with fov pi/2."""
    sensors = env.unwrapped._sensors
    assert set(sensors) == names
    for name in names:
        cfg = sensors[name].config
        assert (cfg.width, cfg.height) == (width, height)
        assert cfg.fov == math.pi / 2


def state(env: Any, seed: int) -> torch.Tensor:
    """The full sim state right after ``reset(seed=seed)``."""
    env.reset(seed=seed)
    return env.unwrapped.get_state().clone()


def assert_seeds_repeat_and_differ(env: Any) -> None:
    """The same seed gives the same start state (also after stepping), another seed a different one."""
    a = state(env, 5)
    env.step(env.action_space.sample())
    b = state(env, 5)
    c = state(env, 6)
    assert torch.allclose(a, b)
    assert not torch.allclose(a, c, atol=1e-3)


def xy_samples(env: Any, actor_name: str, seeds: Sequence[int]) -> np.ndarray:
    """The start xy (len(seeds), 2) of the actor attribute ``actor_name`` over ``seeds``."""
    out = []
    for seed in seeds:
        env.reset(seed=seed)
        out.append(getattr(env.unwrapped, actor_name).pose.p[0, :2].cpu().numpy())
    return np.stack(out)


def assert_in_range(xy: np.ndarray, low: Sequence[float], high: Sequence[float]) -> None:
    """Every row of ``xy`` lies in [low, high] and the rows are not all alike."""
    assert np.all(xy >= np.asarray(low) - 1e-6) and np.all(xy <= np.asarray(high) + 1e-6), xy
    assert np.ptp(xy, axis=0).min() > 1e-3, xy


def planned_demo(task: str, out_dir: Path, seed: int, cameras: Sequence[str]) -> tuple[DemoRunner, AttemptResult]:
    """Plan ``seed`` state-only, replay it with ``cameras`` at 64x48 and write ``out_dir/<task>/demo.h5``.

    The runner is returned open: its ``plan_env`` holds the solver's final state. Close it when done.
    """
    runner = DemoRunner(task, camera_width=DEMO_W, camera_height=DEMO_H, cameras=cameras)
    result = runner.attempt(seed, out_dir / task / "demo.h5", render=True)
    return runner, result


def assert_converts_to_zarr(demo_dir: Path, task: str, agent_ids: Sequence[int], length: int, out_dir: Path) -> None:
    """Each agent's episodes in ``demo_dir`` convert to a zarr with img, state, action and episode_ends as expected."""
    refs = list_episodes(demo_dir)
    assert len(refs) == 1
    for i in agent_ids:
        path = convert_agent(refs, out_dir / f"{task}_Agent{i}_1.zarr", agent_id=i, progress=False)
        buf = ReplayBuffer.open(path)
        np.testing.assert_array_equal(buf.episode_ends, [length])
        img = buf["img"][:]
        assert img.shape == (length, 3, DEMO_H, DEMO_W) and img.dtype == np.uint8
        assert img.std() > 5
        assert buf["state"].shape == (length, 8) and buf["action"].shape == (length, 8)
        action = buf["action"][:]
        assert action[:, 7].min() == -1.0 and action[0, 7] == 1.0  # the gripper closed on the object at some point
