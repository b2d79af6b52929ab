"""Motion-planned solution of ``PlaceFood-rf``: ``panda-1`` holds the lid up, ``panda-0`` drops the meat in.

RoboFactory's order, with the lid put back at the end:

1. Both arms at once (after rising clear of the pot's handles): ``panda-1`` takes the lid's knob (fingers across
   the bar), ``panda-0`` takes the meat from above (fingers across its 3.8 cm thickness); both close and lift,
   the lid by up to 0.32 m.
2. ``panda-0`` carries the meat over the pot with its hand pitched :data:`DROP_PITCH_DEG` forward (fingers
   pointing down and away from its base): a straight-down hand would put its wrist where the raised lid is.
   It opens and the meat falls in; the hand backs away.
3. ``panda-1`` lowers the lid back onto the rim, opens and lifts its hand clear.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import sapien
from transforms3d.euler import euler2quat

from envs.solvers.planner import GraspFailed, MultiArmPlanner, PlanningFailed, as_pose, lifted
from envs.tasks.place_food import KNOB_HALF_SIZE, LID_THICKNESS, RIM_HEIGHT

START_RISE = 0.2
"""Height (m) both hands first rise by from their start poses."""
PRE_GRASP = 0.1
"""Height (m) above each grasp where the descents start."""
LID_LIFTS = (0.32, 0.29, 0.26)
"""How far (m) the lid is raised, the first that a straight move reaches: clears the meat arm's wrist under it."""
KNOB_PITCH_DEG = 20.0
"""Tilt (deg) of ``panda-1``'s hand from straight down, towards its front."""
MEAT_LIFT = 0.2
DROP_PITCH_DEG = 45.0
"""Forward pitch (deg) of ``panda-0``'s hand over the pot, about the closing axis (world x)."""
DROP_OFFSET_Y = -0.04
"""Where the meat is released: this far (m, world y) from the pot's centre, towards ``panda-0``."""
DROP_HEIGHT = 0.25
"""Height (m) of ``panda-0``'s TCP when it releases the meat (its bottom clears the 0.16 m rim)."""
SETTLE_STEPS = 10


def knob_grasp(planner: MultiArmPlanner, pot: Any) -> sapien.Pose:
    """A grasp of the lid's knob for ``panda-1``, fingers across the bar, the hand pitched :data:`KNOB_PITCH_DEG`
    from straight down towards the arm's front (about the closing axis), which keeps the far pot positions and
    the raised lid within reach."""
    T = pot.pose.to_transformation_matrix()[0].cpu().numpy()
    centre = T[:3, 3] + np.array([0.0, 0.0, RIM_HEIGHT + LID_THICKNESS + KNOB_HALF_SIZE[2]])
    closing = T[:3, 1]
    arm = planner.arms[1]
    forward = as_pose(arm.robot.pose).to_transformation_matrix()[:3, 0]
    forward = forward - (forward @ closing) * closing
    forward /= np.linalg.norm(forward)
    pitch = np.deg2rad(KNOB_PITCH_DEG)
    approaching = np.cos(pitch) * np.array([0.0, 0.0, -1.0]) + np.sin(pitch) * forward
    for sign in (1.0, -1.0):
        pose = arm.agent.build_grasp_pose(approaching, sign * closing, centre)
        if planner.can_reach(1, lifted(pose, PRE_GRASP)):
            return pose
    raise PlanningFailed("arm 1 (panda-1): no reachable grasp of the lid knob")


def lift_both(planner: MultiArmPlanner, meat_grasp: sapien.Pose, lid_grasp: sapien.Pose) -> None:
    """Raise the meat by :data:`MEAT_LIFT` and the lid by the first of :data:`LID_LIFTS` a straight move reaches."""
    paths = {0: planner.plan(0, lifted(meat_grasp, MEAT_LIFT), "screw")}
    for height in LID_LIFTS:
        try:
            paths[1] = planner.plan(1, lifted(lid_grasp, height), "screw")
            break
        except PlanningFailed:
            continue
    else:
        raise PlanningFailed(f"arm 1 (panda-1): no straight lift of the lid by {min(LID_LIFTS)} m or more")
    planner.follow(paths)


def solve(env: Any, planner: MultiArmPlanner) -> dict[str, Any]:
    """Run the PlaceFood-rf solution on a freshly reset env; returns the last info."""
    base = env.unwrapped
    lid_grasp = knob_grasp(planner, base.pot)
    meat_grasp = planner.top_down_grasp(0, base.meat)
    # Both start folded low, beside the pot's handles: rise first, then go over to the pre-grasps.
    planner.move({i: lifted(planner.arms[i].tcp_pose(), START_RISE) for i in (0, 1)}, method="screw")
    planner.move({0: lifted(meat_grasp, PRE_GRASP), 1: lifted(lid_grasp, PRE_GRASP)})
    planner.move({0: meat_grasp, 1: lid_grasp})
    planner.close_gripper([0, 1])
    planner.check_grasp(0, base.meat)
    lift_both(planner, meat_grasp, lid_grasp)
    planner.check_grasp(0, base.meat)
    opening = float(base.lid_opening()[0])
    if opening < min(LID_LIFTS) - 0.05:
        raise GraspFailed(f"arm 1 (panda-1) is not holding lid: it is open {opening:.3f} m only")

    pot_xy = base.pot.pose.p[0, :2].cpu().numpy().astype(np.float64)
    hand = planner.arms[0].tcp_pose()
    pitched = sapien.Pose(q=euler2quat(np.deg2rad(DROP_PITCH_DEG), 0.0, 0.0)) * sapien.Pose(q=hand.q)
    drop = sapien.Pose(p=[pot_xy[0], pot_xy[1] + DROP_OFFSET_Y, DROP_HEIGHT], q=pitched.q)
    planner.move({0: drop})
    planner.open_gripper(0)
    back = sapien.Pose(p=drop.p + np.array([0.0, -0.15, 0.05]), q=drop.q)
    planner.move({0: back, 1: lid_grasp}, method="screw")
    planner.open_gripper(1)
    planner.move({1: lifted(lid_grasp, 0.08)})
    return planner.hold(SETTLE_STEPS)
