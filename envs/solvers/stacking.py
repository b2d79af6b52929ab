"""Motion-planned solutions of the cube-stacking tasks: ``StackCube-rf``, ``TwoRobotsStackCube-rf`` and
``ThreeRobotsStackCube-rf``.

All arms that have a cube to move pick theirs up at the same time (one lock-step move per stage); then,
bottom cube first, each arm in turn sets its cube down (on the goal disc or on the cube below), opens,
lifts clear and (unless it was the last) pulls its hand back towards its base, out of the next arm's way.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from envs.solvers.planner import MultiArmPlanner

CUBE_EDGE = 0.04
"""Edge of the tasks' cubes (m)."""
SETTLE_STEPS = 8
"""Steps held at the end so the released cubes come to rest (the success rules need them static)."""


def _position(actor: Any) -> np.ndarray:
    return actor.pose.p[0].cpu().numpy().astype(np.float64)


def stack(planner: MultiArmPlanner, order: Sequence[tuple[int, Any]], base_xy: np.ndarray | None) -> dict[str, Any]:
    """Stack ``order`` = [(arm id, cube), ...] bottom first, the bottom cube at ``base_xy`` (None: leave it)."""
    to_move = [(i, cube) for k, (i, cube) in enumerate(order) if not (k == 0 and base_xy is None)]
    planner.pick({i: cube for i, cube in to_move})
    below = None if base_xy is not None else order[0][1]
    for k, (i, cube) in enumerate(to_move):
        if below is None:
            goal = np.array([base_xy[0], base_xy[1], CUBE_EDGE / 2])
        else:
            goal = _position(below) + np.array([0.0, 0.0, CUBE_EDGE])
        planner.place(i, cube, goal)
        if k < len(to_move) - 1:
            planner.retreat(i)
        below = cube
    return planner.hold(SETTLE_STEPS)


def solve_stack_cube(env: Any, planner: MultiArmPlanner) -> dict[str, Any]:
    """StackCube-rf: the arm puts cube A on cube B."""
    base = env.unwrapped
    return stack(planner, [(0, base.cubeB), (0, base.cubeA)], base_xy=None)


def solve_stack_on_goal(env: Any, planner: MultiArmPlanner) -> dict[str, Any]:
    """Two/ThreeRobotsStackCube-rf: arm k moves cube k (A, B, C) onto the tower on the goal disc."""
    base = env.unwrapped
    cubes = list(base.cubes.values())
    goal_xy = base.goal_region.pose.p[0, :2].cpu().numpy().astype(np.float64)
    return stack(planner, list(enumerate(cubes)), base_xy=goal_xy)
