"""Motion-planned solution of ``StrikeCube-rf``: grasp the hammer mid-handle, lift it, bring the face down on the cube.

RoboFactory's order: a grasp across the handle at the hammer's origin, a 0.2 m lift, the striking face
``PRE_STRIKE`` above the cube, then straight down onto it, holding the hammer closed at the end. Here the
pre-grasp is above the handle (RoboFactory's is 5 cm along it), and the strike stops ``PRESS`` below the
cube's top face, so the face rests on the cube under a light push instead of being driven towards the
cube's centre.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import sapien

from envs.solvers.planner import MultiArmPlanner, PlanningFailed, first_env, lifted

PRE_GRASP = 0.08
"""Height (m) above the handle where the descent to the grasp starts."""
LIFT = 0.2
"""Height (m) the hammer is lifted by after the grasp (RoboFactory's)."""
PRE_STRIKE = 0.05
"""Height (m) of the striking face above the cube's top face before the strike (RoboFactory's)."""
PRESS = 0.005
"""How far (m) below the cube's top face the face is aimed: a light push that keeps the contact."""
HOLD_STEPS = 10
"""Steps held on the cube at the end, the hand closed."""


def handle_grasp(planner: MultiArmPlanner, hammer: Any) -> sapien.Pose:
    """A reachable top-down grasp at the hammer's origin, the fingers closing across the handle."""
    arm = planner.arms[0]
    T = first_env(hammer.pose.to_transformation_matrix())
    across = T[:3, 0] - T[2, 0] * np.array([0.0, 0.0, 1.0])
    across /= np.linalg.norm(across)
    approaching = np.array([0.0, 0.0, -1.0])
    for sign in (1.0, -1.0):
        pose = arm.agent.build_grasp_pose(approaching, sign * across, T[:3, 3])
        if planner.can_reach(0, lifted(pose, PRE_GRASP)) and planner.can_reach(0, pose):
            return pose
    raise PlanningFailed(f"arm 0 ({arm.key}): no reachable grasp of the hammer handle")


def solve(env: Any, planner: MultiArmPlanner) -> dict[str, Any]:
    """Run the StrikeCube-rf solution on a freshly reset env; returns the last info."""
    base = env.unwrapped
    hammer, cube = base.hammer, base.cube
    grasp = handle_grasp(planner, hammer)
    planner.move({0: lifted(grasp, PRE_GRASP)})
    planner.move({0: grasp}, method="screw")
    planner.close_gripper(0)
    planner.check_grasp(0, hammer)
    planner.move({0: lifted(grasp, LIFT)}, method="screw")
    planner.check_grasp(0, hammer)
    tcp = planner.arms[0].tcp_pose()
    face_to_tcp = tcp.p - first_env(base.face_point())
    top = first_env(cube.pose.p) + np.array([0.0, 0.0, float(base.cube_half_size)])
    above = sapien.Pose(p=top + face_to_tcp + np.array([0.0, 0.0, PRE_STRIKE]), q=tcp.q)
    planner.move({0: above})
    planner.move({0: lifted(above, -PRE_STRIKE - PRESS)}, method="screw")
    return planner.hold(HOLD_STEPS)
