"""StrikeCube-rf on the real simulator (CPU): RoboFactory's layout and start pose, seeded resets, both success rules,
a planned demo end to end (plan, replay, h5, zarr)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import task_checks as tc

import envs  # noqa: F401  (registers the -rf tasks)
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


env = tc.state_env_fixture(TASK)


def test_registration_one_arm_two_cameras():
    tc.check_registration(TASK, {"head_camera_agent0", "head_camera_global"}, ["panda-0"], STEP_CAP, (100, 20))


def test_arm_base_start_pose_and_head_camera(env):
    tc.check_one_arm_layout(env, BASE_XYZ, BASE_YAW, START_QPOS, HEAD_CAMERA)


def test_seeded_resets_ranges_and_head_down_hammer(env):
    tc.assert_seeds_repeat_and_differ(env, 5, 6, step_between=True)
    tc.assert_in_range(tc.xy_samples(env, "cube", range(8)), *CUBE_XY_RANGE)
    tc.assert_in_range(tc.xy_samples(env, "hammer", range(8)), *HAMMER_XY_RANGE)
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
    tc.check_success_false_at_reset(env)
    u = env.unwrapped
    # lift the hammer so that its face hovers 2 cm over the cube's top face: RoboFactory's rule counts it
    top = u.cube.pose.p[0] + torch.tensor([0.0, 0.0, 0.02])
    shift = top + torch.tensor([0.0, 0.0, 0.02]) - u.face_point()[0]
    u.hammer.set_pose(Pose.create_from_pq(p=u.hammer.pose.p + shift, q=u.hammer.pose.q))
    info = u.evaluate()
    assert info["success"].item()
    assert not info["is_hammer_touching_cube"].item() and not info["success_strict"].item()
    u.hammer.set_pose(Pose.create_from_pq(p=u.hammer.pose.p + torch.tensor([0.05, 0.0, 0.0]), q=u.hammer.pose.q))
    assert not u.evaluate()["success"].item()  # 5 cm to the side


demo = tc.demo_fixture(TASK, ["head_camera_agent0"])


def test_solver_final_state_meets_both_rules_and_replays(demo):
    final = tc.check_solver_final_state(demo, STEP_CAP)
    assert final["is_hammer_grasped"].item() and final["is_hammer_touching_cube"].item()
    tc.check_replays_from_h5(demo, tc.recorded_actions(demo))


def test_planned_demo_converts_to_zarr(demo, tmp_path):
    tc.check_zarr(demo, tmp_path, [0], gripper_closes=True)
