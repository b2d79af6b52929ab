"""Motion-planned solution of ``PickMeat-rf``: a top-down grasp across the steak's thickness, then a lift.

RoboFactory's plan moves straight to the grasp, closes and lifts by 0.2 m; this one adds a pre-grasp
above the meat (the planner's :meth:`~envs.solvers.planner.MultiArmPlanner.pick`) so the fingers come
down onto it instead of sweeping in from the side.
"""

from __future__ import annotations

from typing import Any

from envs.solvers.planner import MultiArmPlanner

LIFT = 0.2
"""Height (m) the meat is lifted by, RoboFactory's value (success needs its reference point 0.15 m up)."""
HOLD_STEPS = 5
"""Steps held at the top so the success flags are read with the meat at rest in the hand."""


def solve(env: Any, planner: MultiArmPlanner) -> dict[str, Any]:
    """Run the PickMeat-rf solution on a freshly reset env; returns the last info."""
    planner.pick({0: env.unwrapped.meat}, lift=LIFT)
    return planner.hold(HOLD_STEPS)
