"""Motion-planned solution of ``LongPipelineDelivery-rf``: the cube is relayed pad to pad, arm by arm.

``panda-3`` picks the cube and sets it on the first relay pad, returns home; ``panda-2`` picks it there and
sets it on the next pad; and so on until ``panda-0`` sets it on the goal disc.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from envs.solvers.planner import MultiArmPlanner
from envs.solvers.stacking import CUBE_EDGE, SETTLE_STEPS
from envs.tasks.long_pipeline_delivery import RELAY_XY


def solve_long_pipeline(env: Any, planner: MultiArmPlanner) -> dict[str, Any]:
    """Relay the cube from ``panda-3`` to the goal in front of ``panda-0``."""
    base = env.unwrapped
    cube = base.cube
    pads = [np.asarray(xy, dtype=np.float64) for xy in RELAY_XY]
    goal = base.goal_region.pose.p[0, :2].cpu().numpy().astype(np.float64)
    targets = pads + [goal]
    n = len(planner.arms)
    for k, arm in enumerate(range(n - 1, -1, -1)):
        planner.pick({arm: cube})
        xy = targets[k]
        planner.place(arm, cube, np.array([xy[0], xy[1], CUBE_EDGE / 2]))
        planner.go_home(arm)
    return planner.hold(SETTLE_STEPS)

