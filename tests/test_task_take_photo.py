"""TakePhoto-rf on the real simulator (CPU): layout, both success rules (the shutter not pressed fails the strict
one), one planned demo through replay and conversion to zarr."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import task_checks as tc

import envs  # noqa: F401  (registers the -rf tasks)
from mani_skill.utils.structs.pose import Pose

TASK = "TakePhoto-rf"
BASES = [(0.0, -0.85, math.pi / 2), (0.0, 0.85, -math.pi / 2), (1.0, 0.0, math.pi), (-0.6, 0.0, 0.0)]
"""RoboFactory's take_photo.yaml: arm base positions and yaw."""
JOINT4 = [-5 * math.pi / 8] * 3 + [-3 * math.pi / 8]
CAMERA_POSITIONS = {
    "head_camera_global": [0.672536, -0.794409, 0.694811],
    "head_camera_agent3": [-0.70417, 0.458536, 0.606336],
}


env = tc.state_env_fixture(TASK)
demo = tc.demo_fixture(TASK, ["head_camera_agent0"])


def test_registered_with_four_arms_and_five_cameras():
    cams = {f"head_camera_agent{i}" for i in range(4)} | {"head_camera_global"}
    tc.check_registration(TASK, cams, [f"panda-{i}" for i in range(4)], 1500, (100, 20))


def test_seeded_resets_repeat_and_differ(env):
    tc.assert_seeds_repeat_and_differ(env, 3, 4, step_between=False)
    u = env.unwrapped
    for seed in range(6):
        env.reset(seed=seed)
        meat = u.meat.pose.p[0]
        assert 0.45 <= meat[0] < 0.6 and -0.4 <= meat[1] < -0.2
        assert meat[2] > 0.0  # on RoboFactory's table (ManiSkill's ends at x = 0.47)
    hold = {f"panda-{i}": np.append(arm.robot.get_qpos()[0, :7].numpy(), 1.0) for i, arm in enumerate(u.arms)}
    for _ in range(10):
        env.step(hold)
    assert u.meat.pose.p[0, 2] == pytest.approx(0.0345, abs=2e-3)


def test_arms_and_cameras_at_documented_poses(env):
    tc.check_rf_layout(env, BASES, JOINT4, CAMERA_POSITIONS)


def test_success_false_at_reset(env):
    tc.check_success_false_at_reset(env)


@pytest.mark.slow
def test_rules_on_the_solver_final_state_and_without_the_press(demo):
    info = tc.check_solver_final_state(demo, 1500)
    u = demo.final_env
    assert info["shutter_pressed"].item()
    camera = u.camera.pose.raw_pose.clone()

    raise_arm3 = {k: v.copy() for k, v in demo.actions[-1].items()}
    raise_arm3["panda-3"][1] -= 0.06  # shoulder back: the hand leaves the button, staying over it
    for _ in range(15):
        _, _, _, _, info = demo.runner.plan_env.step(raise_arm3)
    assert info["near_button"].item() and info["success"].item()
    assert not info["shutter_pressed"].item() and not info["success_strict"].item()

    u.camera.set_pose(Pose.create(camera))
    quarter_turn = torch.tensor([[math.cos(math.pi / 4), 0.0, 0.0, math.sin(math.pi / 4)]])
    turned = Pose.create_from_pq(p=u.camera.pose.p, q=quarter_turn)
    u.camera.set_pose(turned)  # lens turned away from the meat
    info = u.evaluate()
    assert not info["camera_aimed"].item() and not info["success_strict"].item()


def test_planned_demo_converts_to_zarr(demo, tmp_path):
    tc.check_zarr(demo, tmp_path, [0], gripper_closes=False)
