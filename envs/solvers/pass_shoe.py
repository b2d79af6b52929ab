"""Motion-planned solution of ``PassShoe-rf``: a relay through the table centre, one arm after the other.

RoboFactory's order: ``panda-0`` grasps the shoe from above (fingers across its width, 2 cm behind its centre),
lifts it, carries it to the midpoint of the two bases and lets go, then pulls back; ``panda-1`` grasps it there
at the same point, carries it over the target and lets go. Here each arm lowers the shoe onto the table before
opening (RoboFactory's drops it from 5 cm); the grasp point, rather than the centre, is put on the midpoint, so
it is equally far from both bases (at 0.75 m, near the Panda's reach); ``panda-1`` waits beside the relay spot
while ``panda-0`` brings the shoe, and comes over it while ``panda-0`` backs off; at the end it lifts its hand
clear, so the shoe rests released on the target.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import sapien

from envs.solvers.planner import MultiArmPlanner, PlanningFailed, as_pose, lifted
from envs.tasks.pass_shoe import GRASP_POINT, SHOE_HALF_HEIGHT

PRE_GRASP = 0.08
"""Height (m) above the grasp where each descent starts."""
CARRY = 0.05
"""Height (m) the shoe is lifted by to be carried (RoboFactory's)."""
SET_DOWN = 0.004
"""Height (m) above the table at which the shoe is let go."""
CLEAR = 0.08
"""Height (m) the open hand of ``panda-1`` rises by after letting go on the target."""
WAIT_OFFSET = 0.15
"""How far (m) from the relay spot, on its own side, ``panda-1`` waits while ``panda-0`` brings the shoe."""
WAIT_HEIGHT = 0.22
"""Height (m) of ``panda-1``'s hand while it waits."""
BACK_OFF = (0.5, 0.2)
"""(reach, height) in m, in front of its base, where ``panda-0``'s hand goes after letting go."""
SETTLE_STEPS = 6
"""Steps held at the end so the released shoe is at rest."""


def _np(x: Any) -> np.ndarray:
    return x[0].cpu().numpy().astype(np.float64)


def _across(shoe: Any) -> np.ndarray:
    """The shoe's width axis in the world, levelled: the axis the fingers close along."""
    axis = _np(shoe.pose.to_transformation_matrix())[:3, 0].copy()
    axis[2] = 0.0
    return axis / np.linalg.norm(axis)


def top_down(
    planner: MultiArmPlanner, arm_id: int, point: np.ndarray, across: np.ndarray, pre: float = 0.0
) -> sapien.Pose:
    """A reachable top-down TCP pose of arm ``arm_id`` at ``point``, fingers closing along +-``across``.

    The sign nearest the arm's current closing axis is tried first (no wrist flip); with ``pre`` the pose
    ``pre`` above must be reachable too. Raises :class:`PlanningFailed` when neither sign is.
    """
    arm = planner.arms[arm_id]
    approaching = np.array([0.0, 0.0, -1.0])
    current = arm.tcp_pose().to_transformation_matrix()[:3, 1]
    signs = (1.0, -1.0) if current @ across >= 0 else (-1.0, 1.0)
    for sign in signs:
        pose = arm.agent.build_grasp_pose(approaching, sign * across, point)
        if planner.can_reach(arm_id, pose) and (not pre or planner.can_reach(arm_id, lifted(pose, pre))):
            return pose
    raise PlanningFailed(f"arm {arm_id} ({arm.key}): no reachable top-down pose at {np.round(point, 3).tolist()}")


def shoe_grasp(planner: MultiArmPlanner, arm_id: int, shoe: Any) -> sapien.Pose:
    """A reachable top-down grasp of the shoe's upper for arm ``arm_id``, fingers closing across its width."""
    T = _np(shoe.pose.to_transformation_matrix())
    point = T[:3, :3] @ np.asarray(GRASP_POINT) + T[:3, 3]
    return top_down(planner, arm_id, point, _across(shoe), pre=PRE_GRASP)


def grasp_and_lift(planner: MultiArmPlanner, arm_id: int, shoe: Any, grasp: sapien.Pose) -> None:
    """Descend from above ``grasp`` (where the hand already is), close, check and lift the shoe by ``CARRY``."""
    planner.move({arm_id: grasp})
    planner.close_gripper(arm_id)
    planner.check_grasp(arm_id, shoe)
    planner.move({arm_id: lifted(grasp, CARRY)}, method="screw")
    planner.check_grasp(arm_id, shoe)


def set_down(planner: MultiArmPlanner, arm_id: int, shoe: Any, goal_xy: np.ndarray, also: dict | None = None) -> None:
    """Carry the held shoe over ``goal_xy`` (other arms' moves in ``also`` run alongside), lower it and let go."""
    tcp = planner.arms[arm_id].tcp_pose()
    offset = tcp.p - _np(shoe.pose.p)
    down = np.array([goal_xy[0], goal_xy[1], SHOE_HALF_HEIGHT + SET_DOWN]) + offset
    planner.move({arm_id: sapien.Pose(p=down + np.array([0.0, 0.0, CARRY]), q=tcp.q), **(also or {})})
    planner.move({arm_id: sapien.Pose(p=down, q=tcp.q)})
    planner.open_gripper(arm_id)


def solve(env: Any, planner: MultiArmPlanner) -> dict[str, Any]:
    """Run the PassShoe-rf solution on a freshly reset env; returns the last info."""
    base = env.unwrapped
    shoe = base.shoe
    relay = np.asarray(base.relay_xy, dtype=np.float64)
    bases = [as_pose(arm.robot.pose) for arm in planner.arms]
    # panda-0 picks the shoe up and sets it down at the relay spot, while panda-1 comes to wait on its side
    grasp0 = shoe_grasp(planner, 0, shoe)
    planner.move({0: lifted(grasp0, PRE_GRASP)})
    grasp_and_lift(planner, 0, shoe, grasp0)
    # the grasp point (not the centre) goes on the relay spot: then it is as far from either base
    T = _np(shoe.pose.to_transformation_matrix())
    relay_center = relay - (T[:3, :3] @ np.asarray(GRASP_POINT))[:2]
    toward1 = bases[1].p[:2] - relay
    wait_xy = relay + WAIT_OFFSET * toward1 / np.linalg.norm(toward1)
    wait = top_down(planner, 1, np.array([wait_xy[0], wait_xy[1], WAIT_HEIGHT]), _across(shoe))
    set_down(planner, 0, shoe, relay_center, also={1: wait})
    # panda-0 backs off while panda-1 comes over the shoe; both start and stop together
    forward0 = bases[0].to_transformation_matrix()[:3, 0]
    back = bases[0].p + forward0 * BACK_OFF[0] + np.array([0.0, 0.0, BACK_OFF[1]])
    grasp1 = shoe_grasp(planner, 1, shoe)
    planner.move({0: sapien.Pose(p=back, q=planner.arms[0].tcp_pose().q), 1: lifted(grasp1, PRE_GRASP)}, sync=True)
    grasp_and_lift(planner, 1, shoe, grasp1)
    set_down(planner, 1, shoe, _np(base.goal_region.pose.p)[:2])
    planner.move({1: lifted(planner.arms[1].tcp_pose(), CLEAR)}, method="screw")
    return planner.hold(SETTLE_STEPS)
