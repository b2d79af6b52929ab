"""Motion-planned solutions of ``CameraAlignment-rf`` and ``TakePhoto-rf``.

Both start like RoboFactory's: ``panda-0`` and ``panda-1`` take the camera's two grips (the hand pitched
:data:`GRIP_PITCH_DEG` towards the camera, which keeps the far grip within reach), ``panda-2`` takes the meat
from above, all at once; the three close together, the two lifting arms raise the camera by
:data:`CAMERA_LIFT` in one time-synchronised move while ``panda-2`` raises the meat. Then ``panda-2`` holds the
meat :data:`AIM_DISTANCE` in front of the lens, on its axis (RoboFactory's CameraAlignment only lifts; its
TakePhoto presents the meat at a fixed point). TakePhoto then has ``panda-3`` close its fingers, come over the
shutter and press it :data:`PRESS_DEPTH` down.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import sapien

from envs.solvers.planner import MultiArmPlanner, PlanningFailed, first_env, lifted, resample_path
from envs.tasks.camera_prop import GRASP_Y, GRIP_Z, local_point, shutter_top
from envs.tasks.take_photo import FINGERTIP_BELOW_TCP

GRIP_PITCH_DEG = 20.0
"""Tilt (deg) of the lifting arms' hands from straight down, fingers towards the camera."""
PRE_GRASP = 0.08
"""Height (m) above each grasp where the descents start."""
CAMERA_LIFT = 0.15
"""How far (m) the camera is raised (RoboFactory's); the rule needs its origin above 0.20 m, from 0.09."""
MEAT_LIFT = 0.25
AIM_DISTANCE = 0.25
"""Distance (m) from the lens to the meat's centre when it is presented."""
PRESS_DEPTH = 0.004
"""How far (m) below the shutter's top face ``panda-3``'s closed fingertips are sent (it presses on the top)."""
HOVER = 0.06
SETTLE_STEPS = 10


def grip_grasp(planner: MultiArmPlanner, arm_id: int, camera: Any, side: float) -> sapien.Pose:
    """A grasp of the camera's grip at y = ``side`` * GRASP_Y for ``arm_id``: fingers close along the camera's x,
    the hand tilted :data:`GRIP_PITCH_DEG` from straight down towards the camera's middle."""
    arm = planner.arms[arm_id]
    point = first_env(local_point(camera, (0.0, side * GRASP_Y, GRIP_Z)))
    T = camera.pose.to_transformation_matrix()[0].cpu().numpy()
    closing = T[:3, 0]
    inward = -side * T[:3, 1]
    pitch = np.deg2rad(GRIP_PITCH_DEG)
    approaching = np.cos(pitch) * np.array([0.0, 0.0, -1.0]) + np.sin(pitch) * inward
    for flip in (1.0, -1.0):
        pose = arm.agent.build_grasp_pose(approaching, flip * closing, point)
        if planner.can_reach(arm_id, lifted(pose, CAMERA_LIFT)):
            return pose
    raise PlanningFailed(f"arm {arm_id} ({arm.key}): no reachable grasp of the camera grip at y {side:+.0f}")


def lift_camera_and_meat(env: Any, planner: MultiArmPlanner) -> None:
    """Arms 0 and 1 grasp and lift the camera, arm 2 grasps and lifts the meat, all together."""
    base = env.unwrapped
    camera, meat = base.camera, base.meat
    grasps = {0: grip_grasp(planner, 0, camera, -1.0), 1: grip_grasp(planner, 1, camera, 1.0)}
    grasps[2] = planner.top_down_grasp(2, meat)
    planner.move({i: lifted(g, PRE_GRASP) for i, g in grasps.items()})
    planner.move({0: grasps[0], 1: grasps[1]}, method="screw", sync=True)
    planner.move({2: grasps[2]})
    planner.close_gripper([0, 1, 2])
    for i, actor in ((0, camera), (1, camera), (2, meat)):
        planner.check_grasp(i, actor)
    paths = {i: planner.plan(i, lifted(grasps[i], CAMERA_LIFT), "screw") for i in (0, 1)}
    paths[2] = planner.plan(2, lifted(grasps[2], MEAT_LIFT))
    _follow_lift(planner, paths)
    for i, actor in ((0, camera), (1, camera), (2, meat)):
        planner.check_grasp(i, actor)


def _follow_lift(planner: MultiArmPlanner, paths: dict[int, np.ndarray]) -> None:
    """Execute the lift: the two camera arms time-synchronised, the meat arm on its own timing."""
    n = max(len(paths[0]), len(paths[1]))
    paths = {0: resample_path(paths[0], n), 1: resample_path(paths[1], n), 2: paths[2]}
    planner.follow(paths)


def present_meat(env: Any, planner: MultiArmPlanner) -> None:
    """Arm 2 holds the meat :data:`AIM_DISTANCE` in front of the lens, on the lens axis."""
    base = env.unwrapped
    tip = first_env(base.lens_tip())
    axis = first_env(base.lens_axis())
    target = tip + AIM_DISTANCE * axis
    hand = planner.arms[2].tcp_pose()
    offset = hand.p - first_env(base.meat.pose.p)
    planner.move({2: sapien.Pose(p=target + offset, q=hand.q)})


def press_shutter(env: Any, planner: MultiArmPlanner) -> None:
    """Arm 3 closes its fingers, comes over the shutter and presses it."""
    base = env.unwrapped
    planner.close_gripper([3], extra_steps=0)
    top = first_env(shutter_top(base.camera))
    down = np.array([0.0, 0.0, -1.0])
    closing = first_env(base.camera.pose.to_transformation_matrix()[..., :3, 0])
    arm = planner.arms[3]
    press = None
    for flip in (1.0, -1.0):
        tcp = top + np.array([0.0, 0.0, FINGERTIP_BELOW_TCP - PRESS_DEPTH])
        pose = arm.agent.build_grasp_pose(down, flip * closing, tcp)
        if planner.can_reach(3, lifted(pose, HOVER)):
            press = pose
            break
    if press is None:
        raise PlanningFailed("arm 3 (panda-3): no reachable pose over the shutter")
    planner.move({3: lifted(press, HOVER)})
    planner.move({3: press}, method="screw")


def solve_camera_alignment(env: Any, planner: MultiArmPlanner) -> dict[str, Any]:
    """Run the CameraAlignment-rf solution on a freshly reset env; returns the last info."""
    lift_camera_and_meat(env, planner)
    present_meat(env, planner)
    return planner.hold(SETTLE_STEPS)


def solve_take_photo(env: Any, planner: MultiArmPlanner) -> dict[str, Any]:
    """Run the TakePhoto-rf solution on a freshly reset env; returns the last info."""
    lift_camera_and_meat(env, planner)
    present_meat(env, planner)
    press_shutter(env, planner)
    return planner.hold(SETTLE_STEPS)


__all__ = ["solve_camera_alignment", "solve_take_photo", "grip_grasp", "lift_camera_and_meat", "press_shutter"]
