"""PlaceFood-rf on the real simulator (CPU): layout, the pot's lid joint, both success rules, one planned demo
through replay and conversion to zarr."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import task_checks as tc

import envs  # noqa: F401  (registers the -rf tasks)
from envs.tasks.place_food import RIM_HEIGHT
from mani_skill.utils.structs.pose import Pose

TASK = "PlaceFood-rf"
BASES = [(0.0, -0.75, math.pi / 2), (0.0, 0.75, -math.pi / 2)]
"""RoboFactory's place_food.yaml: arm base positions and yaw."""
JOINT4 = [-3 * math.pi / 4, -3 * math.pi / 4]
GLOBAL_CAMERA_P = [0.538897, 0.0328311, 0.7419]
AGENT0_CAMERA_P = [-0.5, 0.115, 0.4]


env = tc.state_env_fixture(TASK)
demo = tc.demo_fixture(TASK, ["head_camera_agent0"])


def set_meat(u, xyz) -> None:
    u.meat.set_pose(Pose.create_from_pq(p=torch.tensor([xyz], dtype=torch.float32), q=u.meat.pose.q))


def test_registered_with_two_arms_and_three_cameras():
    cams = {"head_camera_agent0", "head_camera_agent1", "head_camera_global"}
    tc.check_registration(TASK, cams, ["panda-0", "panda-1"], 500, (20, 20))


def test_seeded_resets_repeat_and_differ(env):
    tc.assert_seeds_repeat_and_differ(env, 3, 4, step_between=False)
    xs = []
    for seed in range(8):
        env.reset(seed=seed)
        u = env.unwrapped
        pot, meat = u.pot.pose.p[0], u.meat.pose.p[0]
        assert -0.15 <= pot[0] < 0.15 and pot[1] == pytest.approx(0.05)
        assert meat[0] == pytest.approx(pot[0].item(), abs=1e-5)
        assert meat[1] == pytest.approx(pot[1].item() - 0.25, abs=1e-5)
        xs.append(pot[0].item())
    assert np.ptp(xs) > 0.05


def test_arms_and_global_camera_at_documented_poses(env):
    cameras = {"head_camera_global": GLOBAL_CAMERA_P, "head_camera_agent0": AGENT0_CAMERA_P}
    tc.check_rf_layout(env, BASES, JOINT4, cameras)


def test_lid_is_a_prismatic_link_that_moves(env):
    env.reset(seed=0)
    u = env.unwrapped
    assert u.lid_joint.type[0] == "prismatic"
    closed = u.lid.pose.p[0].clone()
    assert closed[2] == pytest.approx(RIM_HEIGHT, abs=1e-4)
    u.pot.set_qpos(torch.tensor([[0.2]]))
    u.pot.set_qvel(torch.zeros((1, 1)))
    raised = u.lid.pose.p[0].clone()
    np.testing.assert_allclose(raised.numpy(), closed.numpy() + [0.0, 0.0, 0.2], atol=1e-4)
    assert u.lid_opening().item() == pytest.approx(0.2, abs=1e-4)
    hold = {f"panda-{i}": np.append(arm.robot.get_qpos()[0, :7].numpy(), 1.0) for i, arm in enumerate(u.arms)}
    for _ in range(20):
        env.step(hold)
    assert u.lid_opening().item() < 0.01  # falls back onto the rim
    np.testing.assert_allclose(u.lid.pose.p[0, :2].numpy(), closed[:2].numpy(), atol=1e-4)


def test_success_false_at_reset(env):
    tc.check_success_false_at_reset(env)


def test_strict_rule_rejects_lid_up_and_moving_meat(env):
    env.reset(seed=0)
    u = env.unwrapped
    pot = u.pot.pose.p[0]
    set_meat(u, [pot[0].item(), pot[1].item() + 0.03, 0.045])  # resting in the pot
    u.pot.set_qpos(torch.tensor([[0.25]]))  # lid held up
    info = u.evaluate()
    assert info["success"].item() and not info["lid_closed"].item() and not info["success_strict"].item()
    u.pot.set_qpos(torch.tensor([[0.0]]))
    assert u.evaluate()["success_strict"].item()
    u.meat.set_linear_velocity(torch.tensor([[0.0, 0.0, -0.5]]))  # still falling
    info = u.evaluate()
    assert info["success"].item() and not info["meat_static"].item() and not info["success_strict"].item()
    set_meat(u, [pot[0].item() + 0.12, pot[1].item(), 0.045])  # against the wall, too far from the centre
    u.meat.set_linear_velocity(torch.zeros((1, 3)))
    assert not u.evaluate()["success"].item()


def test_solver_final_state_succeeds_and_replays(demo):
    info = tc.check_solver_final_state(demo, 500)
    assert info["meat_released"].item() and info["lid_closed"].item()


def test_planned_demo_converts_to_zarr(demo, tmp_path):
    tc.check_zarr(demo, tmp_path, [0], gripper_closes=False)
