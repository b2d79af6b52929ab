"""PassShoe-rf on the real simulator (CPU): RoboFactory's two-arm layout, cameras and 20 Hz physics, seeded resets,
both success rules (a dropped shoe is not a strict success), a planned relay end to end (plan, replay, h5, zarr)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import task_checks as tc

import envs  # noqa: F401  (registers the -rf tasks)
from envs.tasks.base import PANDA_INIT_QPOS
from mani_skill.utils.structs.pose import Pose

TASK = "PassShoe-rf"
# RoboFactory's pass_shoe.yaml and task file
BASES = [((0.0, -0.75, 0.0), math.pi / 2), ((0.0, 0.75, 0.0), -math.pi / 2)]
START_QPOS = [0.0, 0.3926990817, 0.0, -1.9634954085, 0.0, 2.3561944902, 0.7853981634, 0.04, 0.04]
AGENT_CAMERAS = {
    "head_camera_agent0": ([-0.5, 0.115, 0.4], [0.0, -0.235, 0.1]),
    "head_camera_agent1": ([0.5, -0.115, 0.4], [0.0, 0.235, 0.1]),
}
GLOBAL_CAMERA = ([-0.698591, 0.434148, 0.558983], [0.954989, 0.038711, 0.144233, -0.256309])
SHOE_XY_RANGE = ((-0.5, -0.5), (-0.3, -0.3))
GOAL_XY_RANGE = ((0.3, 0.3), (0.5, 0.5))
STEP_CAP = 500
SHOE_REST_Z = 0.0465


env = tc.state_env_fixture(TASK)


def test_registration_two_arms_three_cameras():
    cams = {"head_camera_agent0", "head_camera_agent1", "head_camera_global"}
    # (20, 20) Hz: RoboFactory's PassShoe, one physics step per control step
    tc.check_registration(TASK, cams, ["panda-0", "panda-1"], STEP_CAP, (20, 20))


def test_arm_bases_start_poses_and_cameras(env):
    env.reset(seed=0)
    u = env.unwrapped
    tc.check_arm_bases(env, BASES, [START_QPOS] * 2, atol=1e-5)
    for name, (eye, target) in AGENT_CAMERAS.items():
        tc.assert_camera_looks(env, name, eye, target)
    tc.check_camera_positions(env, {"head_camera_global": GLOBAL_CAMERA[0]})
    q = u._sensors["head_camera_global"].camera.global_pose.q[0].numpy()
    assert abs(q @ np.asarray(GLOBAL_CAMERA[1])) == pytest.approx(1.0, abs=1e-4)


def test_seeded_resets_and_ranges(env):
    tc.assert_seeds_repeat_and_differ(env, 5, 6, step_between=True)
    tc.assert_in_range(tc.xy_samples(env, "shoe", range(8)), *SHOE_XY_RANGE)
    tc.assert_in_range(tc.xy_samples(env, "goal_region", range(8)), *GOAL_XY_RANGE)


def hold(env, steps: int) -> dict:
    action = np.concatenate([PANDA_INIT_QPOS[:7], [1.0]]).astype(np.float32)
    for _ in range(steps):
        _, _, _, _, info = env.step({"panda-0": action, "panda-1": action})
    return info


def test_a_shoe_dropped_onto_the_target_is_a_strict_success_only_once_at_rest(env):
    tc.check_success_false_at_reset(env)
    u = env.unwrapped
    goal = u.goal_region.pose.p[0]
    drop = torch.tensor([[goal[0].item(), goal[1].item(), 0.3]])
    u.shoe.set_pose(Pose.create_from_pq(p=drop, q=u.shoe.pose.q))
    info = hold(env, 2)  # falling through the air above the target
    assert u.shoe.pose.p[0, 2].item() > SHOE_REST_Z + 0.05
    assert info["success"].item() and info["is_shoe_released"].item()
    assert not info["success_strict"].item()
    info = hold(env, 30)
    assert u.shoe.pose.p[0, 2].item() == pytest.approx(SHOE_REST_Z, abs=0.005)
    assert info["success"].item() and info["success_strict"].item()
    beside = drop.clone()
    beside[0, 0] += 0.15
    beside[0, 2] = SHOE_REST_Z
    u.shoe.set_pose(Pose.create_from_pq(p=beside, q=u.shoe.pose.q))
    info = hold(env, 3)
    assert not info["success"].item() and not info["success_strict"].item()


demo = tc.demo_fixture(TASK, list(AGENT_CAMERAS))


@pytest.mark.slow
def test_solver_relay_meets_both_rules_and_replays(demo):
    tc.check_solver_final_state(demo, STEP_CAP)
    actions = tc.recorded_actions(demo)
    for key in ("panda-0", "panda-1"):  # both arms grasped the shoe in turn
        assert min(a[key][7] for a in actions) == -1.0
    tc.check_replays_from_h5(demo, actions)


def test_planned_demo_converts_to_zarr_per_agent(demo, tmp_path):
    tc.check_zarr(demo, tmp_path, [0, 1], gripper_closes=True)
