"""The -rf tasks on the real ManiSkill simulator (CPU physics, software rendering, tiny cameras).

Every task builds, resets and steps with random actions with the documented observation/action layout,
seeds reproduce layouts, and each success rule is checked by setting poses that should and should not count.
"""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch

import envs  # noqa: F401  (registers the -rf tasks)
from envs.tasks.base import PANDA_INIT_QPOS
from mani_skill.utils.structs.pose import Pose

CAM_W, CAM_H = 32, 24
TASK_ARMS = {"LiftBarrier-rf": 2}


def make(task: str, **kwargs) -> gym.Env:
    """A task with tiny cameras and, unless overridden, no initial joint noise."""
    kwargs.setdefault("obs_mode", "rgb")
    return gym.make(task, camera_width=CAM_W, camera_height=CAM_H, **kwargs)


def hold_action(gripper: float) -> np.ndarray:
    """Hold RoboFactory's initial arm pose with the given gripper command."""
    return np.concatenate([PANDA_INIT_QPOS[:7], [gripper]]).astype(np.float32)


def set_pose(actor, xyz, quat=(1.0, 0.0, 0.0, 0.0)) -> None:
    actor.set_pose(Pose.create_from_pq(p=torch.tensor([xyz], dtype=torch.float32), q=torch.tensor([quat])))


def quat_about_x(deg: float) -> tuple[float, float, float, float]:
    h = np.deg2rad(deg) / 2
    return (float(np.cos(h)), float(np.sin(h)), 0.0, 0.0)


@pytest.fixture(scope="module", params=sorted(TASK_ARMS))
def task_env(request):
    env = make(request.param)
    yield request.param, env
    env.close()


def test_builds_resets_and_steps_with_layout(task_env):
    task, env = task_env
    n = TASK_ARMS[task]
    obs, info = env.reset(seed=0)
    cams = {f"head_camera_agent{i}" for i in range(n)} | {"head_camera_global"}
    assert set(obs["sensor_data"]) == cams
    for cam in cams:
        rgb = obs["sensor_data"][cam]["rgb"]
        assert rgb.shape == (1, CAM_H, CAM_W, 3) and rgb.dtype == torch.uint8
    if n == 1:
        assert obs["agent"]["qpos"].shape == (1, 9)
        assert env.action_space.shape == (8,)
    else:
        keys = [f"panda-{i}" for i in range(n)]
        assert list(obs["agent"]) == keys
        assert list(env.action_space.spaces) == keys
        for k in keys:
            assert obs["agent"][k]["qpos"].shape == (1, 9)
            space = env.action_space[k]
            assert space.shape == (8,)
            assert space.low[7] == -1.0 and space.high[7] == 1.0
    modes = env.unwrapped.control_mode
    assert set(modes.values() if isinstance(modes, dict) else [modes]) == {"pd_joint_pos"}
    for _ in range(3):
        obs, reward, terminated, truncated, info = env.step(env.action_space.sample())
    assert info["success"].dtype == torch.bool and info["success"].shape == (1,)
    assert reward.shape == (1,)
    assert obs["sensor_data"]["head_camera_global"]["rgb"].shape == (1, CAM_H, CAM_W, 3)


def test_same_seed_same_layout_different_seed_different(task_env):
    _, env = task_env
    u = env.unwrapped
    env.reset(seed=11)
    a = u.get_state().clone()
    env.step(env.action_space.sample())
    env.reset(seed=11)
    b = u.get_state().clone()
    env.reset(seed=12)
    c = u.get_state().clone()
    assert torch.allclose(a, b)
    assert not torch.allclose(a, c, atol=1e-3)


def test_arms_are_placed_as_documented(task_env):
    _, env = task_env
    env.reset(seed=0)
    u = env.unwrapped
    for placement, arm in zip(u.arm_placements, u.arms):
        p = arm.robot.pose.p[0]
        assert torch.allclose(p, torch.tensor([placement.x, placement.y, 0.0]), atol=1e-5)


def test_camera_size_defaults_to_robofactory():
    env = gym.make("LiftBarrier-rf", obs_mode="rgb")
    try:
        obs, _ = env.reset(seed=0)
        assert obs["sensor_data"]["head_camera_agent0"]["rgb"].shape == (1, 240, 320, 3)
    finally:
        env.close()


def test_bad_camera_size_is_rejected():
    with pytest.raises(ValueError, match="camera_width"):
        gym.make("LiftBarrier-rf", camera_width=0)


@pytest.fixture(scope="module")
def lift_env():
    env = make("LiftBarrier-rf", obs_mode="state_dict", robot_init_qpos_noise=0.0)
    yield env
    env.close()


class TestLiftBarrierSuccess:
    def test_bar_on_table_fails(self, lift_env):
        env = lift_env
        env.reset(seed=0)
        info = env.unwrapped.evaluate()
        assert not info["success"].item() and not info["success_strict"].item()

    def test_lifted_bar_without_grasp_is_loose_success_only(self, lift_env):
        env = lift_env
        env.reset(seed=0)
        u = env.unwrapped
        set_pose(u.barrier, [0.0, 0.0, 0.30])
        info = u.evaluate()
        assert info["success"].item() and not info["success_strict"].item()
        set_pose(u.barrier, [0.0, 0.0, 0.30], quat_about_x(60))  # tipped on end, as a one-arm lift leaves it
        info = u.evaluate()
        assert info["success"].item() and not info["is_level"].item()
        set_pose(u.barrier, [0.0, 0.0, 0.14])
        assert not u.evaluate()["success"].item()

    def test_two_arm_grasp_is_strict_success_and_release_is_not(self, lift_env):
        env = lift_env
        env.reset(seed=0)
        u = env.unwrapped
        tcp = [arm.tcp.pose.p[0] for arm in u.arms]
        set_pose(u.barrier, ((tcp[0] + tcp[1]) / 2).tolist())
        q = torch.as_tensor(PANDA_INIT_QPOS)[None].clone()
        q[:, -2:] = u.bar_half_size[0]  # fingers touching the bar's sides
        for arm in u.arms:
            arm.robot.set_qpos(q)
        for _ in range(5):
            _, _, _, _, info = env.step({"panda-0": hold_action(-1.0), "panda-1": hold_action(-1.0)})
        assert info["is_grasped_0"].item() and info["is_grasped_1"].item()
        assert info["success"].item() and info["success_strict"].item()
        for _ in range(10):
            _, _, _, _, info = env.step({"panda-0": hold_action(-1.0), "panda-1": hold_action(1.0)})
        assert not info["is_grasped_1"].item()
        assert not info["success_strict"].item()
