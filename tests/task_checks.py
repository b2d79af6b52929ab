"""Checks shared by the per-task test files of the -rf tasks rebuilt from primitives (a helper, not a test module).

Numbers the tests compare against (base poses, camera placements, ranges) come from RoboFactory's task configs,
written out in each test file, never read back from the env's own attributes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import gymnasium as gym
import numpy as np
import pytest
import torch

from envs.demo_io import list_episodes, read_actions
from envs.solvers import SOLVERS
from envs.solvers.planner import success_flag
from envs.solvers.runner import AttemptResult, DemoRunner
from envs.tasks import TASK_IDS
from mani_skill.utils.registration import REGISTERED_ENVS
from rf_dp_agents.data.convert import convert_agent
from rf_dp_agents.data.replay_buffer import ReplayBuffer

CAM_W, CAM_H = 64, 48
"""Camera size of the registration checks and of the planned test demos."""


def yaw_quat(yaw: float) -> torch.Tensor:
    """(w, x, y, z) of a rotation by ``yaw`` about +z (RoboFactory's base orientations are Euler (0, 0, yaw))."""
    return torch.tensor([math.cos(yaw / 2), 0.0, 0.0, math.sin(yaw / 2)])


def state_env_fixture(task: str) -> Callable[[], Iterator[Any]]:
    """A module-scoped fixture ``env``: ``task`` with state_dict obs and no start-pose noise, closed at the end."""

    @pytest.fixture(scope="module", name="env")
    def env() -> Iterator[Any]:
        """The state-only env of ``task``."""
        e = gym.make(task, obs_mode="state_dict", robot_init_qpos_noise=0.0)
        yield e
        e.close()

    return env


def check_registration(
    task: str, cameras: set[str], agent_keys: Sequence[str], step_cap: int, freqs: tuple[int, int]
) -> None:
    """``task`` has a solver, ``step_cap`` steps, agents ``agent_keys``, just ``cameras``, (sim, control) ``freqs``."""
    assert task in TASK_IDS and task in SOLVERS and task in gym.registry
    assert REGISTERED_ENVS[task].max_episode_steps == step_cap
    env = gym.make(task, obs_mode="rgb", camera_width=CAM_W, camera_height=CAM_H)
    try:
        obs, _ = env.reset(seed=0)
        assert env._max_episode_steps == step_cap  # ManiSkill's TimeLimitWrapper
        if len(agent_keys) == 1:
            assert env.action_space.shape == (8,) and obs["agent"]["qpos"].shape == (1, 9)
        else:
            assert list(obs["agent"]) == list(agent_keys) and list(env.action_space.spaces) == list(agent_keys)
            for k in agent_keys:
                assert env.action_space[k].shape == (8,) and obs["agent"][k]["qpos"].shape == (1, 9)
        assert_camera_format(env, cameras, CAM_W, CAM_H)
        assert set(obs["sensor_data"]) == cameras
        for cam in obs["sensor_data"].values():
            assert cam["rgb"].shape == (1, CAM_H, CAM_W, 3)
        u = env.unwrapped
        assert (u.sim_freq, u.control_freq) == freqs
    finally:
        env.close()


def assert_base_pose(arm: Any, xyz: Sequence[float], yaw: float) -> None:
    """The arm's base stands at ``xyz`` with heading ``yaw`` (quaternion sign either way, within 1e-5)."""
    pose = arm.robot.pose
    assert torch.allclose(pose.p[0], torch.tensor(xyz, dtype=torch.float32), atol=1e-5, rtol=0.0), pose.p
    q, want = pose.q[0], yaw_quat(yaw)
    assert torch.allclose(q, want, atol=1e-5, rtol=0.0) or torch.allclose(q, -want, atol=1e-5, rtol=0.0), (q, want)


def check_arm_bases(
    env: Any, bases: Sequence[tuple[Sequence[float], float]], qpos: Sequence[Sequence[float]], atol: float
) -> None:
    """Arm i stands at ``bases[i]`` = (xyz, yaw); its first len(qpos[i]) joints start at ``qpos[i]`` (``atol``)."""
    arms = env.unwrapped.arms
    assert len(arms) == len(bases) == len(qpos)
    for arm, (xyz, yaw), q in zip(arms, bases, qpos):
        assert_base_pose(arm, xyz, yaw)
        np.testing.assert_allclose(arm.robot.get_qpos()[0].numpy()[: len(q)], q, atol=atol)


def check_rf_layout(
    env: Any, bases: Sequence[tuple[float, float, float]], joint4: Sequence[float], cameras: dict[str, Sequence[float]]
) -> None:
    """After ``reset(seed=0)`` arm i stands at ``bases[i]`` = (x, y, yaw), joint 4 at ``joint4[i]``, cameras placed."""
    env.reset(seed=0)
    check_arm_bases(env, [((x, y, 0.0), yaw) for x, y, yaw in bases], [rf_start_joints(j) for j in joint4], atol=1e-4)
    check_camera_positions(env, cameras)


def check_one_arm_layout(
    env: Any,
    xyz: Sequence[float],
    yaw: float,
    qpos: Sequence[float],
    head_camera: tuple[Sequence[float], Sequence[float]],
) -> None:
    """After ``reset(seed=0)`` the one arm stands at ``xyz``, ``yaw`` in ``qpos``; its head camera is (eye, target)."""
    env.reset(seed=0)
    check_arm_bases(env, [(xyz, yaw)], [qpos], atol=1e-5)
    assert_camera_looks(env, "head_camera_agent0", *head_camera)


def rf_start_joints(joint4: float) -> list[float]:
    """RoboFactory's seven start joints with the fourth set to ``joint4`` (rad)."""
    return [0.0, math.pi / 8, 0.0, joint4, 0.0, 3 * math.pi / 4, math.pi / 4]


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


def check_camera_positions(env: Any, positions: dict[str, Sequence[float]]) -> None:
    """Each named sensor camera sits at the given world position (within 0.1 mm)."""
    for name, p in positions.items():
        np.testing.assert_allclose(camera_pose(env, name)[0], p, atol=1e-4, err_msg=name)


def assert_camera_format(env: Any, names: set[str], width: int, height: int) -> None:
    """The env's sensor cameras are exactly ``names``, each ``width`` x ``height`` with fov pi/2."""
    sensors = env.unwrapped._sensors
    assert set(sensors) == names
    for name in names:
        cfg = sensors[name].config
        assert (cfg.width, cfg.height) == (width, height)
        assert cfg.fov == math.pi / 2


def state_after_reset(env: Any, seed: int) -> torch.Tensor:
    """The full sim state right after ``reset(seed=seed)``."""
    env.reset(seed=seed)
    return env.unwrapped.get_state().clone()


def assert_seeds_repeat_and_differ(env: Any, seed: int, other: int, step_between: bool) -> None:
    """``seed`` repeats its start state (also after a random step, if ``step_between``); ``other`` differs."""
    a = state_after_reset(env, seed)
    if step_between:
        env.step(env.action_space.sample())
    b = state_after_reset(env, seed)
    c = state_after_reset(env, other)
    assert torch.allclose(a, b)
    assert not torch.allclose(a, c, atol=1e-3)


def check_success_false_at_reset(env: Any) -> None:
    """Neither success rule holds right after ``reset(seed=0)``."""
    env.reset(seed=0)
    info = env.unwrapped.evaluate()
    assert not info["success"].item() and not info["success_strict"].item()


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


@dataclass
class PlannedDemo:
    """A planned seed: the open runner, the plan's result and actions, the rendered replay's flags, its h5 file."""

    runner: DemoRunner
    seed: int
    result: AttemptResult
    actions: list
    replay_success: bool
    replay_strict: bool | None
    h5: Path

    @property
    def final_env(self) -> Any:
        """The unwrapped env the solver ran in, at its final state."""
        return self.runner.plan_env.unwrapped


def plan_demo(task: str, seed: int, out_dir: Path, cameras: Sequence[str]) -> PlannedDemo:
    """Plan ``seed`` state-only; on success replay it with ``cameras`` into ``out_dir/<task>/seed_<seed>.h5``."""
    runner = DemoRunner(task, camera_width=CAM_W, camera_height=CAM_H, cameras=list(cameras))
    result, actions = runner.plan(seed)
    h5 = out_dir / task / f"seed_{seed:06d}.h5"
    demo = PlannedDemo(runner, seed, result, actions, False, None, h5)
    if result.outcome == "success":
        h5.parent.mkdir(parents=True, exist_ok=True)
        demo.replay_success, demo.replay_strict = runner.replayer.record(seed, actions, h5)
    return demo


def demo_fixture(task: str, cameras: Sequence[str]) -> Callable[..., Iterator[PlannedDemo]]:
    """A module-scoped fixture ``demo``: seed 0 of ``task`` planned and recorded with ``cameras``, closed at the end."""

    @pytest.fixture(scope="module", name="demo")
    def demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PlannedDemo]:
        """Seed 0 of ``task``, planned and recorded."""
        d = plan_demo(task, 0, tmp_path_factory.mktemp(task), cameras)
        yield d
        d.runner.close()

    return demo


def check_solver_final_state(demo: PlannedDemo, step_cap: int) -> dict[str, Any]:
    """Plan and replay met both rules within ``step_cap`` steps, as does the final state; returns its evaluate()."""
    assert demo.result.outcome == "success", demo.result.message
    assert demo.replay_success and demo.replay_strict is True
    assert 0 < demo.result.steps <= step_cap and len(demo.actions) <= step_cap
    info = demo.final_env.evaluate()
    assert info["success"].item() and info["success_strict"].item()
    return info


def recorded_actions(demo: PlannedDemo) -> list[dict[str, np.ndarray]]:
    """The per-step action dicts read back from the demo's h5 file."""
    return read_actions(list_episodes(demo.h5.parent)[0])


def check_replays_from_h5(demo: PlannedDemo, actions: list[dict[str, np.ndarray]]) -> None:
    """``actions`` (read back from the h5) replayed state-only from the seed meet both rules."""
    _, info = demo.runner.replay(demo.seed, actions, env=demo.runner.plan_env, render=False)
    assert success_flag(info) and success_flag(info, "success_strict")


def check_zarr(demo: PlannedDemo, out_dir: Path, agent_ids: Sequence[int], gripper_closes: bool) -> None:
    """Each agent's episode converts to a zarr of the demo's img, state, planned actions (and, if asked, a grasp)."""
    assert demo.replay_success, f"seed {demo.seed}: {demo.result.outcome} {demo.result.message}"
    refs = list_episodes(demo.h5.parent)
    assert len(refs) == 1
    n = len(demo.actions)
    task = demo.h5.parent.name
    for i in agent_ids:
        path = convert_agent(refs, out_dir / f"{task}_Agent{i}_1.zarr", agent_id=i, progress=False)
        buf = ReplayBuffer.open(path)
        np.testing.assert_array_equal(buf.episode_ends, [n])
        img = buf["img"][:]
        assert img.shape == (n, 3, CAM_H, CAM_W) and img.dtype == np.uint8 and img.std() > 5
        assert buf["state"].shape == (n, 8) and buf["action"].shape == (n, 8)
        action = buf["action"][:]
        np.testing.assert_allclose(action, np.stack([a[f"panda-{i}"] for a in demo.actions]), atol=1e-6)
        if gripper_closes:
            assert action[:, 7].min() == -1.0 and action[0, 7] == 1.0
