"""PickMeat-rf on the real simulator (CPU): RoboFactory's layout, seeded resets, both success rules, a planned demo
end to end (plan, replay, h5, zarr)."""

from __future__ import annotations

import torch
import task_checks as tc

import envs  # noqa: F401  (registers the -rf tasks)
from mani_skill.utils.structs.pose import Pose

TASK = "PickMeat-rf"
# RoboFactory's pick_meat.yaml and task file
BASE_XYZ, BASE_YAW = (-0.615, 0.0, 0.0), 0.0
START_QPOS = [0.0, 0.3926990817, 0.0, -1.9634954085, 0.0, 2.3561944902, 0.7853981634, 0.04, 0.04]
HEAD_CAMERA = ([0.25, 0.5, 0.4], [-0.1, 0.0, 0.1])
MEAT_XY_RANGE = ((-0.05, -0.05), (0.15, 0.15))
STEP_CAP = 500


env = tc.state_env_fixture(TASK)


def test_registration_one_arm_two_cameras():
    # (100, 20) Hz: ManiSkill's defaults, as RoboFactory's PickMeat
    tc.check_registration(TASK, {"head_camera_agent0", "head_camera_global"}, ["panda-0"], STEP_CAP, (100, 20))


def test_arm_base_start_pose_and_head_camera(env):
    tc.check_one_arm_layout(env, BASE_XYZ, BASE_YAW, START_QPOS, HEAD_CAMERA)


def test_seeded_resets_and_meat_range(env):
    tc.assert_seeds_repeat_and_differ(env, 5, 6, step_between=True)
    tc.assert_in_range(tc.xy_samples(env, "meat", range(8)), *MEAT_XY_RANGE)


def set_meat(env, z: float) -> None:
    u = env.unwrapped
    p = u.meat.pose.p.clone()
    p[:, 2] = z
    u.meat.set_pose(Pose.create_from_pq(p=p, q=torch.tensor([[1.0, 0.0, 0.0, 0.0]])))


def test_success_rules_false_at_reset_and_strict_needs_a_grasp(env):
    tc.check_success_false_at_reset(env)
    u = env.unwrapped
    set_meat(env, 0.16)  # centre 0.16 m up: RoboFactory's reference point (2.7 cm lower) is under 0.15
    assert not u.evaluate()["success"].item()
    set_meat(env, 0.30)  # flung up, nobody holds it: RoboFactory's rule counts it, the strict rule does not
    info = u.evaluate()
    assert info["success"].item() and not info["is_meat_grasped"].item()
    assert not info["success_strict"].item()


demo = tc.demo_fixture(TASK, ["head_camera_agent0"])


def test_solver_final_state_meets_both_rules_and_replays(demo):
    tc.check_solver_final_state(demo, STEP_CAP)
    tc.check_replays_from_h5(demo, tc.recorded_actions(demo))


def test_planned_demo_converts_to_zarr(demo, tmp_path):
    tc.check_zarr(demo, tmp_path, [0], gripper_closes=True)

