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
from envs.tasks import TASK_IDS
from envs.tasks.base import CUBE_HALF_SIZE, PANDA_INIT_QPOS, ArmPlacement
from envs.tasks.lift_barrier import LiftBarrierEnv
from envs.tasks.long_pipeline_delivery import CUBE_START_RANGE, GOAL_RANGE, RELAY_XY, LongPipelineDeliveryEnv
from envs.tasks.stack_cube import StackCubeEnv
from envs.tasks.three_robots_stack_cube import ThreeRobotsStackCubeEnv
from envs.tasks.two_robots_stack_cube import TwoRobotsStackCubeEnv
from mani_skill.agents.robots.panda.panda import Panda
from mani_skill.utils.structs.pose import Pose

CAM_W, CAM_H = 32, 24
TASK_ARMS = {
    "StackCube-rf": 1,
    "LiftBarrier-rf": 2,
    "TwoRobotsStackCube-rf": 2,
    "ThreeRobotsStackCube-rf": 3,
    "LongPipelineDelivery-rf": 4,
}


def make(task: str, **kwargs) -> gym.Env:
    """A task with tiny cameras and, unless overridden, no initial joint noise."""
    kwargs.setdefault("obs_mode", "rgb")
    return gym.make(task, camera_width=CAM_W, camera_height=CAM_H, **kwargs)


def hold_action(gripper: float) -> np.ndarray:
    """Hold RoboFactory's initial arm pose with the given gripper command."""
    return np.concatenate([PANDA_INIT_QPOS[:7], [gripper]]).astype(np.float32)


def hold_all(env: gym.Env, steps: int) -> dict:
    """Step ``steps`` times with every arm holding its initial pose, gripper open; return the last info."""
    n = env.unwrapped.num_arms
    action = hold_action(1.0) if n == 1 else {f"panda-{i}": hold_action(1.0) for i in range(n)}
    for _ in range(steps):
        _, _, _, _, info = env.step(action)
    return info


def set_pose(actor, xyz, quat=(1.0, 0.0, 0.0, 0.0)) -> None:
    actor.set_pose(Pose.create_from_pq(p=torch.tensor([xyz], dtype=torch.float32), q=torch.tensor([quat])))


def quat_about_x(deg: float) -> tuple[float, float, float, float]:
    h = np.deg2rad(deg) / 2
    return (float(np.cos(h)), float(np.sin(h)), 0.0, 0.0)


def arm_actions(env: gym.Env, targets: dict[int, np.ndarray]) -> np.ndarray | dict[str, np.ndarray]:
    """The env action: arm i gets ``targets[i]`` (8-d), the other arms hold their initial pose, gripper open."""
    n = env.unwrapped.num_arms
    per_arm = [targets.get(i, hold_action(1.0)) for i in range(n)]
    return per_arm[0] if n == 1 else {f"panda-{i}": a for i, a in enumerate(per_arm)}


def step_for(env: gym.Env, action, steps: int) -> dict:
    for _ in range(steps):
        info = env.step(action)[4]
    return info


def put_cube_in_hand(env: gym.Env, arm_id: int, cube, center) -> np.ndarray:
    """Set arm ``arm_id`` (mplib IK) so its TCP points straight down at ``center``, fingers touching the sides of
    ``cube``, which is placed between them; return that arm's 8-d action holding it there.

    The gripper command 0.1 (finger targets 2.5 mm inside the cube's faces) grasps it in ManiSkill's sense and
    keeps it at rest; a full -1 squeeze makes PhysX report a jittering, non-static cube."""
    import mplib

    u = env.unwrapped
    placement: ArmPlacement = u.arm_placements[arm_id]
    planner = mplib.Planner(
        urdf=Panda.urdf_path, srdf=Panda.urdf_path.replace(".urdf", ".srdf"), move_group="panda_hand_tcp"
    )
    planner.set_base_pose(np.concatenate([[placement.x, placement.y, 0.0], placement.quat]))
    for closing in ((0.0, 1.0, 0.0), (1.0, 0.0, 0.0)):
        goal = planner.transform_goal_to_wrt_base(top_down_grasp(center, closing))
        status, solutions = planner.IK(goal, PANDA_INIT_QPOS.astype(np.float64), n_init_qpos=40)
        if status == "Success":
            break
    else:
        raise AssertionError(f"no top-down IK solution for arm {arm_id} at {center}")
    q = np.asarray(solutions[0], dtype=np.float32).copy()
    q[7:9] = CUBE_HALF_SIZE
    arm = u.arms[arm_id]
    arm.robot.set_qpos(torch.as_tensor(q)[None])
    set_pose(cube, arm.tcp.pose.p[0].tolist())
    return np.concatenate([q[:7], [0.1]]).astype(np.float32)


def assert_success_only_once_released(env: gym.Env, arm_id: int, hold: np.ndarray, held_key: str) -> None:
    """With the goal configuration built and arm ``arm_id`` holding its cube: RoboFactory's rule holds, the
    strict rule only once the arm lets go."""
    info = step_for(env, arm_actions(env, {arm_id: hold}), 5)
    assert bool(info[held_key].item()) == (held_key.endswith("grasped")), "the cube is not held"
    assert not info["success_strict"].item(), "strict success while an arm still holds the cube"
    assert info["success"].item(), "RoboFactory's rule counts a placement still held"
    opened = hold.copy()
    opened[7] = 1.0
    info = step_for(env, arm_actions(env, {arm_id: opened}), 15)
    assert bool(info[held_key].item()) != (held_key.endswith("grasped"))
    assert info["success"].item() and info["success_strict"].item()


@pytest.fixture(scope="module", params=sorted(TASK_ARMS))
def task_env(request):
    env = make(request.param, render_mode="rgb_array")
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
    frame = env.render()
    assert frame.shape == (1, 512, 512, 3) and frame.float().std() > 5.0


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


PLUS_X, PLUS_Y, MINUS_Y = (1.0, 0.0), (0.0, 1.0), (0.0, -1.0)
FACING_PAIR = [((0.0, -0.75), PLUS_Y), ((0.0, 0.75), MINUS_Y)]
DOCUMENTED_ARMS = {
    "StackCube-rf": [((-0.615, 0.0), PLUS_X)],
    "LiftBarrier-rf": FACING_PAIR,
    "TwoRobotsStackCube-rf": FACING_PAIR,
    "ThreeRobotsStackCube-rf": [*FACING_PAIR, ((-0.70, 0.0), PLUS_X)],
    "LongPipelineDelivery-rf": [((-0.615, y), PLUS_X) for y in (-0.9, -0.3, 0.3, 0.9)],
}
"""Base (x, y) and heading of panda-0, panda-1, ... as the README, the design notes (RoboFactory's two-arm layout:
panda-0 at (0, -0.75) facing +y, panda-1 at (0, 0.75) facing -y) and the task docstrings give them."""


def test_arms_are_placed_as_documented(task_env):
    task, env = task_env
    env.reset(seed=0)
    arms = env.unwrapped.arms
    assert len(arms) == len(DOCUMENTED_ARMS[task])
    for i, (arm, ((x, y), (fx, fy))) in enumerate(zip(arms, DOCUMENTED_ARMS[task])):
        pose = arm.robot.pose
        assert torch.allclose(pose.p[0], torch.tensor([x, y, 0.0]), atol=1e-5), f"{task} panda-{i}"
        forward = pose.to_transformation_matrix()[0, :3, 0]  # the base's local +x: where the arm faces
        assert torch.allclose(forward, torch.tensor([fx, fy, 0.0]), atol=1e-5), f"{task} panda-{i} faces {forward}"


def test_each_agent_camera_looks_at_its_own_arm(task_env):
    _, env = task_env
    u = env.unwrapped
    workspaces = [torch.tensor(pl.to_world((0.45, 0.0, 0.05)), dtype=torch.float32) for pl in u.arm_placements]
    for i in range(u.num_arms):
        pose = u._sensors[f"head_camera_agent{i}"].camera.global_pose
        eye = pose.p[0]
        forward = pose.to_transformation_matrix()[0, :3, 0]  # SAPIEN cameras look along local +x
        angles = [
            torch.rad2deg(torch.arccos(torch.dot(forward, (w - eye) / torch.linalg.norm(w - eye)).clamp(-1, 1)))
            for w in workspaces
        ]
        assert angles[i] < 30.0
        assert int(torch.argmin(torch.stack(angles))) == i


def test_paused_cameras_leave_the_observation_and_come_back():
    env = make("LiftBarrier-rf", robot_init_qpos_noise=0.0)
    try:
        u = env.unwrapped
        full, _ = env.reset(seed=0)
        assert set(full["sensor_data"]) == {"head_camera_agent0", "head_camera_agent1", "head_camera_global"}
        assert u.pause_cameras(["head_camera_global"]) == {"head_camera_global"} == u.paused_cameras
        paused, _ = env.reset(seed=0)
        assert set(paused["sensor_data"]) == {"head_camera_agent0", "head_camera_agent1"}
        for cam in paused["sensor_data"]:  # the cameras still rendered see the same scene
            assert torch.equal(paused["sensor_data"][cam]["rgb"], full["sensor_data"][cam]["rgb"])
        assert set(u._sensors) == set(full["sensor_data"])  # paused, not removed
        assert u.pause_cameras([]) == frozenset()
        resumed, _ = env.reset(seed=0)
        assert torch.equal(resumed["sensor_data"]["head_camera_global"]["rgb"],
                           full["sensor_data"]["head_camera_global"]["rgb"])
        u.pause_cameras(["head_camera_global"])
        stepped = env.step({f"panda-{i}": hold_action(1.0) for i in range(2)})[0]
        assert set(stepped["sensor_data"]) == {"head_camera_agent0", "head_camera_agent1"}
        with pytest.raises(ValueError, match=r"LiftBarrier-rf: no sensor camera \['head_camera_top'\]"):
            u.pause_cameras(["head_camera_top"])
        assert u.paused_cameras == {"head_camera_global"}  # a bad call changes nothing
    finally:
        env.close()


def test_wrong_number_of_robots_is_rejected():
    with pytest.raises(ValueError, match="places 2 arm"):
        gym.make("LiftBarrier-rf", robot_uids=("panda",))


ROBOFACTORY_TASKS = {
    "PickMeat-rf", "StackCube-rf", "StrikeCube-rf", "LiftBarrier-rf", "PassShoe-rf", "PlaceFood-rf",
    "TwoRobotsStackCube-rf", "ThreeRobotsStackCube-rf", "CameraAlignment-rf", "LongPipelineDelivery-rf", "TakePhoto-rf",
}
"""RoboFactory's eleven tasks; the ones not in TASK_ARMS are tested in tests/test_task_<name>.py."""


def test_task_ids_are_registered():
    assert set(TASK_IDS) == ROBOFACTORY_TASKS and set(TASK_ARMS) <= ROBOFACTORY_TASKS
    for task in TASK_IDS:
        assert task in gym.registry


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
        held = u.barrier.pose.p[0].tolist()
        for tilt, level in ((9.5, True), (10.5, False)):  # the strict rule's 10-degree threshold, grasp unchanged
            set_pose(u.barrier, held, quat_about_x(tilt))
            info = u.evaluate()
            assert u.bar_tilt_deg().item() == pytest.approx(tilt, abs=1e-3)
            assert info["is_grasped_0"].item() and info["is_grasped_1"].item() and info["success"].item()
            assert info["is_level"].item() == level and info["success_strict"].item() == level, tilt
        set_pose(u.barrier, held)
        for _ in range(10):
            _, _, _, _, info = env.step({"panda-0": hold_action(-1.0), "panda-1": hold_action(1.0)})
        assert not info["is_grasped_1"].item()
        assert not info["success_strict"].item()


@pytest.fixture(scope="module")
def stack_env():
    env = make("StackCube-rf", obs_mode="state_dict")
    yield env
    env.close()


class TestStackCubeSuccess:
    def test_initial_layout_fails(self, stack_env):
        stack_env.reset(seed=0)
        info = stack_env.unwrapped.evaluate()
        assert not info["success"].item() and not info["success_strict"].item()

    def test_cube_resting_on_cube_succeeds(self, stack_env):
        stack_env.reset(seed=0)
        u = stack_env.unwrapped
        b = u.cubeB.pose.p[0]
        set_pose(u.cubeA, [b[0].item(), b[1].item(), b[2].item() + 2 * CUBE_HALF_SIZE])
        info = hold_all(stack_env, 5)
        assert info["is_cubeA_on_cubeB"].item() and info["success"].item() and info["success_strict"].item()

    def test_cube_held_on_cube_succeeds_only_once_released(self, stack_env):
        stack_env.reset(seed=0)
        u = stack_env.unwrapped
        b = u.cubeB.pose.p[0].tolist()
        set_pose(u.cubeB, [b[0], b[1], CUBE_HALF_SIZE])
        hold = put_cube_in_hand(stack_env, 0, u.cubeA, (b[0], b[1], 3 * CUBE_HALF_SIZE))
        info = step_for(stack_env, arm_actions(stack_env, {0: hold}), 5)
        assert info["is_cubeA_on_cubeB"].item() and info["is_cubeA_static"].item()
        assert_success_only_once_released(stack_env, 0, hold, "is_cubeA_grasped")

    def test_cube_beside_or_moving_fails(self, stack_env):
        stack_env.reset(seed=0)
        u = stack_env.unwrapped
        b = u.cubeB.pose.p[0]
        set_pose(u.cubeA, [b[0].item() + 0.05, b[1].item(), CUBE_HALF_SIZE])
        info = hold_all(stack_env, 2)
        assert not info["success"].item() and not info["success_strict"].item()
        set_pose(u.cubeA, [b[0].item(), b[1].item(), b[2].item() + 2 * CUBE_HALF_SIZE])
        u.cubeA.set_linear_velocity(torch.tensor([[0.0, 0.0, 0.5]]))
        info = u.evaluate()
        assert info["is_cubeA_on_cubeB"].item() and not info["is_cubeA_static"].item()
        assert info["success"].item() and not info["success_strict"].item()  # RoboFactory's counts a moving cube


@pytest.mark.parametrize("task", ["TwoRobotsStackCube-rf", "ThreeRobotsStackCube-rf"])
def test_tower_on_goal_success_rule(task):
    env = make(task, obs_mode="state_dict")
    try:
        env.reset(seed=0)
        u = env.unwrapped
        info = u.evaluate()
        assert not info["success"].item() and not info["success_strict"].item()
        goal = u.goal_region.pose.p[0]
        names = list(u.cubes)

        def build_tower(dx: float, n_cubes: int) -> None:
            for level, name in enumerate(names[:n_cubes]):
                z = CUBE_HALF_SIZE * (2 * level + 1)
                set_pose(u.cubes[name], [goal[0].item() + dx, goal[1].item(), z])

        build_tower(0.0, len(names))
        info = hold_all(env, 5)
        assert info[f"{names[0]}_on_goal"].item() and info["success"].item() and info["success_strict"].item()
        env.reset(seed=0)
        build_tower(0.0, len(names) - 1)  # top cube missing
        info = hold_all(env, 2)
        assert not info["success"].item() and not info["success_strict"].item()
        env.reset(seed=0)
        build_tower(0.15, len(names))  # complete tower beside the goal
        info = hold_all(env, 2)
        assert not info[f"{names[0]}_on_goal"].item() and not info["success"].item()
        assert not info["success_strict"].item()
        if task == "TwoRobotsStackCube-rf":  # the tower built, its top cube still in panda-1's hand
            env.reset(seed=0)
            build_tower(0.0, len(names) - 1)
            top = CUBE_HALF_SIZE * (2 * len(names) - 1)
            hold = put_cube_in_hand(env, 1, u.cubes[names[-1]], (goal[0].item(), goal[1].item(), top))
            info = step_for(env, arm_actions(env, {1: hold}), 5)
            assert info[f"is_{names[-1]}_on_{names[-2]}"].item() and info["cubes_static"].item()
            assert_success_only_once_released(env, 1, hold, "cubes_released")
    finally:
        env.close()


def test_pipeline_success_and_stage():
    env = make("LongPipelineDelivery-rf", obs_mode="state_dict")
    try:
        env.reset(seed=0)
        u = env.unwrapped
        info = u.evaluate()
        assert not info["success"].item() and not info["success_strict"].item() and info["stage"].item() == 0
        stages = []
        for x, y in RELAY_XY:
            set_pose(u.cube, [x, y, CUBE_HALF_SIZE])
            info = u.evaluate()
            assert not info["success"].item() and not info["success_strict"].item()
            stages.append(info["stage"].item())
        assert stages == [1, 2, 3]
        goal = u.goal_region.pose.p[0]
        set_pose(u.cube, [goal[0].item(), goal[1].item(), 0.2])  # above the goal, not put down
        info = u.evaluate()
        assert not info["success"].item() and not info["success_strict"].item()
        set_pose(u.cube, [goal[0].item(), goal[1].item(), CUBE_HALF_SIZE])
        info = hold_all(env, 5)
        assert info["cube_in_goal"].item() and info["success"].item() and info["success_strict"].item()
        env.reset(seed=0)  # put down on the goal but still in panda-0's hand
        goal = u.goal_region.pose.p[0]
        hold = put_cube_in_hand(env, 0, u.cube, (goal[0].item(), goal[1].item(), CUBE_HALF_SIZE + 0.003))
        info = step_for(env, arm_actions(env, {0: hold}), 5)
        assert info["cube_in_goal"].item()
        assert_success_only_once_released(env, 0, hold, "cube_released")
    finally:
        env.close()


# ---------------------------------------------------------------------------------------------- reachability
def corners(box, zs) -> list[tuple[float, float, float]]:
    """The four xy corners of ((x_lo, y_lo), (x_hi, y_hi)) at each height in ``zs``."""
    (x0, y0), (x1, y1) = box
    return [(x, y, z) for x in (x0, x1) for y in (y0, y1) for z in zs]


def lift_barrier_targets() -> dict[int, list]:
    """Both bar grasp points at the extremes of the bar's position and yaw, on the table and lifted."""
    env = LiftBarrierEnv
    targets: dict[int, list] = {0: [], 1: []}
    d = env.bar_half_size[1] - env.grasp_inset
    for xc, yc, _ in corners(env.bar_xy_range, [0.0]):
        for yaw in (-env.bar_max_yaw, env.bar_max_yaw):
            axis = np.array([-np.sin(yaw), np.cos(yaw), 0.0])
            closing = (np.cos(yaw), np.sin(yaw), 0.0)
            for arm, sign in ((0, -1.0), (1, 1.0)):
                for z in (0.02, 0.25):
                    p = np.array([xc, yc, z]) + sign * d * axis
                    targets[arm].append((tuple(p), [closing]))
    return targets


def any_closing(points) -> list:
    return [(p, [(1.0, 0.0, 0.0), (0.0, 1.0, 0.0)]) for p in points]


def stack_targets(env_cls) -> dict[int, list]:
    """Each cube picked anywhere in its start range; each placed on the tower at its level, anywhere on the goal."""
    targets = {}
    ranges = list(env_cls.cube_ranges.values())
    goal = getattr(env_cls, "goal_range", None)
    for arm, box in enumerate(ranges):
        place = corners(goal, [CUBE_HALF_SIZE * (2 * arm + 1)]) if goal else corners(ranges[1], [0.06])
        targets[arm] = any_closing(corners(box, (0.02, 0.12)) + place)
        if goal is None:  # one arm: it picks A and places on B
            break
    return targets


def pipeline_targets() -> dict[int, list]:
    """Arm i picks on the pad (or start area) on its +y side and puts down on its -y side (or the goal)."""
    pads = [(x, y, z) for x, y in RELAY_XY for z in (0.02, 0.12)]
    return {
        3: any_closing(corners(CUBE_START_RANGE, (0.02, 0.12)) + pads[0:2]),
        2: any_closing(pads[0:4]),
        1: any_closing(pads[2:6]),
        0: any_closing(pads[4:6] + corners(GOAL_RANGE, (0.02, 0.12))),
    }


REACH_TARGETS = {
    "StackCube-rf": (StackCubeEnv, lambda: stack_targets(StackCubeEnv)),
    "LiftBarrier-rf": (LiftBarrierEnv, lift_barrier_targets),
    "TwoRobotsStackCube-rf": (TwoRobotsStackCubeEnv, lambda: stack_targets(TwoRobotsStackCubeEnv)),
    "ThreeRobotsStackCube-rf": (ThreeRobotsStackCubeEnv, lambda: stack_targets(ThreeRobotsStackCubeEnv)),
    "LongPipelineDelivery-rf": (LongPipelineDeliveryEnv, pipeline_targets),
}


def top_down_grasp(center, closing) -> np.ndarray:
    """[x, y, z, qw, qx, qy, qz] of a TCP pointing straight down with fingers closing along ``closing``."""
    from transforms3d.quaternions import mat2quat

    z = np.array([0.0, 0.0, -1.0])
    y = np.asarray(closing, dtype=float)
    y = y / np.linalg.norm(y)
    x = np.cross(y, z)
    return np.concatenate([np.asarray(center, dtype=float), mat2quat(np.stack([x, y, z], axis=1))])


@pytest.mark.parametrize("task", sorted(REACH_TARGETS))
def test_every_arm_reaches_what_it_must_touch(task):
    """mplib IK (self-collision checked) finds a top-down grasp at every extreme of the task's randomisation."""
    import mplib

    env_cls, targets_fn = REACH_TARGETS[task]
    targets = targets_fn()
    assert set(targets) <= set(range(len(env_cls.arm_placements)))
    planner = mplib.Planner(
        urdf=Panda.urdf_path, srdf=Panda.urdf_path.replace(".urdf", ".srdf"), move_group="panda_hand_tcp"
    )
    start = PANDA_INIT_QPOS.astype(np.float64)
    unreachable = []
    for arm, points in targets.items():
        placement: ArmPlacement = env_cls.arm_placements[arm]
        planner.set_base_pose(np.concatenate([[placement.x, placement.y, 0.0], placement.quat]))
        for center, closings in points:
            ok = False
            for closing in closings:
                goal = planner.transform_goal_to_wrt_base(top_down_grasp(center, closing))
                status, _ = planner.IK(goal, start, n_init_qpos=40)
                if status == "Success":
                    ok = True
                    break
            if not ok:
                unreachable.append((arm, tuple(round(float(v), 3) for v in center)))
    assert not unreachable, f"{task}: arm/point pairs with no top-down IK solution: {unreachable}"
