"""StrikeCube-rf on the real simulator (CPU): RoboFactory's layout and start pose, seeded resets, both success rules,
a planned demo end to end (plan, replay, h5, zarr)."""

from __future__ import annotations

import math

import gymnasium as gym
import numpy as np
import pytest
import torch
from task_checks import (
    assert_base_pose,
    assert_camera_format,
    assert_camera_looks,
    assert_converts_to_zarr,
    assert_in_range,
    assert_seeds_repeat_and_differ,
    planned_demo,
    xy_samples,
)

import envs  # noqa: F401  (registers the -rf tasks)
from envs.demo_io import list_episodes, read_actions
from envs.solvers import SOLVERS
from envs.solvers.planner import success_flag
from mani_skill.utils.registration import REGISTERED_ENVS
from mani_skill.utils.structs.pose import Pose

TASK = "StrikeCube-rf"
# RoboFactory's strike_cube.yaml and task file
BASE_XYZ, BASE_YAW = (-0.615, 0.0, 0.0), 0.0
START_QPOS = [0.0, 0.3926990817, 0.0, -1.5707963268, 0.0, 2.3561944902, 0.7853981634, 0.04, 0.04]
HEAD_CAMERA = ([0.25, 0.5, 0.4], [-0.1, 0.0, 0.1])
CUBE_XY_RANGE = ((0.10, -0.10), (0.15, 0.10))
HAMMER_XY_RANGE = ((0.0, 0.0), (0.06, 0.15))
HAMMER_QUAT = (0.093, 0.873, 0.476, 0.051)
STEP_CAP = 350


@pytest.fixture(scope="module")
def env():
    e = gym.make(TASK, obs_mode="state_dict", robot_init_qpos_noise=0.0)
    yield e
    e.close()


def test_registration_one_arm_two_cameras():
    e = gym.make(TASK, obs_mode="rgb", camera_width=64, camera_height=48)
    try:
        obs, _ = e.reset(seed=0)
        assert TASK in SOLVERS
        assert REGISTERED_ENVS[TASK].max_episode_steps == STEP_CAP
        assert e.action_space.shape == (8,) and obs["agent"]["qpos"].shape == (1, 9)
        cams = {"head_camera_agent0", "head_camera_global"}
        assert_camera_format(e, cams, 64, 48)
        assert set(obs["sensor_data"]) == cams
        for cam in cams:
            assert obs["sensor_data"][cam]["rgb"].shape == (1, 48, 64, 3)
        u = e.unwrapped
        assert (u.sim_freq, u.control_freq) == (100, 20)
    finally:
        e.close()


def test_arm_base_start_pose_and_head_camera(env):
    env.reset(seed=0)
    u = env.unwrapped
    assert_base_pose(u.agent, BASE_XYZ, BASE_YAW)
    np.testing.assert_allclose(u.agent.robot.get_qpos()[0].numpy(), START_QPOS, atol=1e-5)
    assert_camera_looks(env, "head_camera_agent0", *HEAD_CAMERA)


def test_seeded_resets_ranges_and_head_down_hammer(env):
    assert_seeds_repeat_and_differ(env)
    assert_in_range(xy_samples(env, "cube", range(8)), *CUBE_XY_RANGE)
    assert_in_range(xy_samples(env, "hammer", range(8)), *HAMMER_XY_RANGE)
    u = env.unwrapped
    for seed in range(8):
        env.reset(seed=seed)
        q = u.hammer.pose.q[0].numpy()
        angle = 2 * math.degrees(math.acos(min(1.0, abs(q @ np.asarray(HAMMER_QUAT)) / np.linalg.norm(HAMMER_QUAT))))
        assert angle < 15.0  # RoboFactory's spawn orientation, the head stood upright
        assert u.face_point()[0, 2].item() == pytest.approx(0.0, abs=1e-4)  # striking face down on the table
        cube, hammer = u.cube.pose.p[0, :2], u.hammer.pose.p[0, :2]
        assert torch.linalg.norm(cube - hammer).item() > 0.05  # redrawn layouts keep them apart


def test_success_rules_false_at_reset_and_strict_needs_contact_and_grasp(env):
    env.reset(seed=0)
    u = env.unwrapped
    info = u.evaluate()
    assert not info["success"].item() and not info["success_strict"].item()
    # lift the hammer so that its face hovers 2 cm over the cube's top face: RoboFactory's rule counts it
    top = u.cube.pose.p[0] + torch.tensor([0.0, 0.0, 0.02])
    shift = top + torch.tensor([0.0, 0.0, 0.02]) - u.face_point()[0]
    u.hammer.set_pose(Pose.create_from_pq(p=u.hammer.pose.p + shift, q=u.hammer.pose.q))
    info = u.evaluate()
    assert info["success"].item()
    assert not info["is_hammer_touching_cube"].item() and not info["success_strict"].item()
    u.hammer.set_pose(Pose.create_from_pq(p=u.hammer.pose.p + torch.tensor([0.05, 0.0, 0.0]), q=u.hammer.pose.q))
    assert not u.evaluate()["success"].item()  # 5 cm to the side


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("strike_cube")
    runner, result = planned_demo(TASK, out, seed=0, cameras=("head_camera_agent0",))
    yield runner, result, out
    runner.close()


def test_solver_final_state_meets_both_rules_and_replays(demo):
    runner, result, out = demo
    assert result.outcome == "success", result.message  # "success" also means the rendered replay succeeded
    assert result.success_strict is True
    assert 0 < result.steps <= STEP_CAP
    final = runner.plan_env.unwrapped.evaluate()
    assert final["success"].item() and final["success_strict"].item()
    assert final["is_hammer_grasped"].item() and final["is_hammer_touching_cube"].item()
    ref = list_episodes(out / TASK)[0]
    _, info = runner.replay(0, read_actions(ref), env=runner.plan_env, render=False)
    assert success_flag(info) and success_flag(info, "success_strict")


def test_planned_demo_converts_to_zarr(demo, tmp_path):
    _, result, out = demo
    assert_converts_to_zarr(out / TASK, TASK, [0], result.steps, tmp_path)
