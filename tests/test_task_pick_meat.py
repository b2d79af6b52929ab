"""PickMeat-rf on the real simulator (CPU): RoboFactory's layout, seeded resets, both success rules, a planned demo
end to end (plan, replay, h5, zarr)."""

from __future__ import annotations

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

TASK = "PickMeat-rf"
# RoboFactory's pick_meat.yaml and task file
BASE_XYZ, BASE_YAW = (-0.615, 0.0, 0.0), 0.0
START_QPOS = [0.0, 0.3926990817, 0.0, -1.9634954085, 0.0, 2.3561944902, 0.7853981634, 0.04, 0.04]
HEAD_CAMERA = ([0.25, 0.5, 0.4], [-0.1, 0.0, 0.1])
MEAT_XY_RANGE = ((-0.05, -0.05), (0.15, 0.15))
STEP_CAP = 500


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
        assert (u.sim_freq, u.control_freq) == (100, 20)  # ManiSkill's defaults, as RoboFactory's PickMeat
    finally:
        e.close()


def test_arm_base_start_pose_and_head_camera(env):
    env.reset(seed=0)
    u = env.unwrapped
    assert_base_pose(u.agent, BASE_XYZ, BASE_YAW)
    np.testing.assert_allclose(u.agent.robot.get_qpos()[0].numpy(), START_QPOS, atol=1e-5)
    assert_camera_looks(env, "head_camera_agent0", *HEAD_CAMERA)


def test_seeded_resets_and_meat_range(env):
    assert_seeds_repeat_and_differ(env)
    assert_in_range(xy_samples(env, "meat", range(8)), *MEAT_XY_RANGE)


def set_meat(env, z: float) -> None:
    u = env.unwrapped
    p = u.meat.pose.p.clone()
    p[:, 2] = z
    u.meat.set_pose(Pose.create_from_pq(p=p, q=torch.tensor([[1.0, 0.0, 0.0, 0.0]])))


def test_success_rules_false_at_reset_and_strict_needs_a_grasp(env):
    env.reset(seed=0)
    u = env.unwrapped
    info = u.evaluate()
    assert not info["success"].item() and not info["success_strict"].item()
    set_meat(env, 0.16)  # centre 0.16 m up: RoboFactory's reference point (2.7 cm lower) is under 0.15
    assert not u.evaluate()["success"].item()
    set_meat(env, 0.30)  # flung up, nobody holds it: RoboFactory's rule counts it, the strict rule does not
    info = u.evaluate()
    assert info["success"].item() and not info["is_meat_grasped"].item()
    assert not info["success_strict"].item()


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("pick_meat")
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
    ref = list_episodes(out / TASK)[0]
    _, info = runner.replay(0, read_actions(ref), env=runner.plan_env, render=False)
    assert success_flag(info) and success_flag(info, "success_strict")


def test_planned_demo_converts_to_zarr(demo, tmp_path):
    _, result, out = demo
    assert_converts_to_zarr(out / TASK, TASK, [0], result.steps, tmp_path)

