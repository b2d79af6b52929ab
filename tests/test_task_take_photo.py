"""TakePhoto-rf on the real simulator (CPU): layout, both success rules (the shutter not pressed fails the strict
one), one planned demo through replay and conversion to zarr."""

from __future__ import annotations

import math

import gymnasium as gym
import numpy as np
import pytest
import torch

import envs  # noqa: F401  (registers the -rf tasks)
from envs.solvers import SOLVERS
from envs.tasks import TASK_IDS
from mani_skill.utils.structs.pose import Pose
from rf_demo import (
    CAM_H,
    CAM_W,
    check_arm_bases,
    check_camera_positions,
    check_zarr,
    plan_record_convert,
    state_after_reset,
)

TASK = "TakePhoto-rf"
BASES = [(0.0, -0.85, math.pi / 2), (0.0, 0.85, -math.pi / 2), (1.0, 0.0, math.pi), (-0.6, 0.0, 0.0)]
"""RoboFactory's take_photo.yaml: arm base positions and yaw."""
JOINT4 = [-5 * math.pi / 8] * 3 + [-3 * math.pi / 8]
CAMERA_POSITIONS = {
    "head_camera_global": [0.672536, -0.794409, 0.694811],
    "head_camera_agent3": [-0.70417, 0.458536, 0.606336],
}


@pytest.fixture(scope="module")
def env():
    env = gym.make(TASK, obs_mode="state_dict", robot_init_qpos_noise=0.0)
    yield env
    env.close()


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    demo = plan_record_convert(TASK, 0, tmp_path_factory.mktemp("take_photo"))
    yield demo
    demo.runner.close()


def test_registered_with_four_arms_and_five_cameras():
    assert TASK in TASK_IDS and TASK in SOLVERS and TASK in gym.registry
    env = gym.make(TASK, obs_mode="rgb", camera_width=CAM_W, camera_height=CAM_H)
    try:
        obs, _ = env.reset(seed=0)
        cams = {f"head_camera_agent{i}" for i in range(4)} | {"head_camera_global"}
        assert set(obs["sensor_data"]) == cams
        for cam in obs["sensor_data"].values():
            assert cam["rgb"].shape == (1, CAM_H, CAM_W, 3)
        assert list(env.action_space.spaces) == [f"panda-{i}" for i in range(4)]
        assert env.unwrapped.sim_freq == 100 and env.unwrapped.control_freq == 20
        assert env._max_episode_steps == 1500  # ManiSkill's TimeLimitWrapper
    finally:
        env.close()


def test_seeded_resets_repeat_and_differ(env):
    a, b, c = state_after_reset(env, 3), state_after_reset(env, 3), state_after_reset(env, 4)
    assert torch.allclose(a, b) and not torch.allclose(a, c, atol=1e-3)
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
    env.reset(seed=0)
    check_arm_bases(env.unwrapped, BASES, JOINT4)
    check_camera_positions(env.unwrapped, CAMERA_POSITIONS)


def test_success_false_at_reset(env):
    env.reset(seed=0)
    info = env.unwrapped.evaluate()
    assert not info["success"].item() and not info["success_strict"].item()


def test_rules_on_the_solver_final_state_and_without_the_press(demo):
    assert demo.result.outcome == "success", demo.result.message
    assert demo.replay_success and demo.replay_strict
    assert len(demo.actions) <= 1500
    u = demo.final_env
    info = u.evaluate()
    assert info["success"].item() and info["shutter_pressed"].item() and info["success_strict"].item()
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


def test_planned_demo_converts_to_zarr(demo):
    check_zarr(demo)
