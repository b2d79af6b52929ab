"""Motion-planned solution of ``LiftBarrier-rf``: both arms grasp the bar near their own end and lift together.

Each arm takes a top-down grasp on the bar's long axis, ``END_INSET`` from the end nearer its base, with
the fingers closing across the bar. Both arms descend, close (graded), and lift by ``LIFT`` in one
time-synchronised move so the bar stays level.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import sapien

from envs.solvers.planner import MultiArmPlanner, PlanningFailed, as_pose, lifted

END_INSET = 0.07
"""Distance (m) from a bar end to the grasp point along the bar."""
PRE_GRASP = 0.08
"""Height (m) above the grasp where each descent starts."""
LIFT = 0.22
"""Height (m) the bar is lifted by (success needs > 0.15 above the base, from 0.02)."""


def bar_grasp(planner: MultiArmPlanner, arm_id: int, barrier: Any, half_length: float) -> sapien.Pose:
    """A reachable top-down grasp of the bar near the end facing arm ``arm_id``."""
    arm = planner.arms[arm_id]
    T = barrier.pose.to_transformation_matrix()[0].cpu().numpy()
    center, long_axis, short_axis = T[:3, 3], T[:3, 1], T[:3, 0]
    base = as_pose(arm.robot.pose).p
    sign = 1.0 if (base - center) @ long_axis > 0 else -1.0
    point = center + sign * long_axis * (half_length - END_INSET)
    approaching = np.array([0.0, 0.0, -1.0])
    closing = short_axis - (short_axis @ approaching) * approaching
    closing /= np.linalg.norm(closing)
    for flip in (1.0, -1.0):
        pose = arm.agent.build_grasp_pose(approaching, flip * closing, point)
        if planner.can_reach(arm_id, lifted(pose, PRE_GRASP)):
            return pose
    raise PlanningFailed(f"arm {arm_id} ({arm.key}): no reachable grasp of the bar end")


def solve(env: Any, planner: MultiArmPlanner) -> dict[str, Any]:
    """Run the LiftBarrier-rf solution on a freshly reset env; returns the last info."""
    barrier = env.unwrapped.barrier
    half_length = float(env.unwrapped.bar_half_size[1])
    grasps = {i: bar_grasp(planner, i, barrier, half_length) for i in (0, 1)}
    planner.move({i: lifted(g, PRE_GRASP) for i, g in grasps.items()})
    planner.move(grasps, method="screw", sync=True)
    planner.close_gripper([0, 1])
    for i in (0, 1):
        planner.check_grasp(i, barrier)
    planner.move({i: lifted(g, LIFT) for i, g in grasps.items()}, method="screw", sync=True)
    return planner.hold(5)
