"""Motion-planning solvers for the ``-rf`` tasks (mplib, one planner per arm) and the demo-episode runner.

``SOLVERS`` maps a task id to ``solve(env, planner) -> info``: the function runs a whole episode on a freshly
reset env through a :class:`~envs.solvers.planner.MultiArmPlanner` and raises
:class:`~envs.solvers.planner.PlanningFailed` or :class:`~envs.solvers.planner.GraspFailed` when it cannot
go on. :mod:`envs.solvers.runner` turns a seed into a recorded demonstration.
"""

from __future__ import annotations

from typing import Any, Callable

from envs.solvers import lift_barrier, pipeline, stacking
from envs.solvers import pass_shoe, pick_meat, strike_cube
from envs.solvers import camera_tasks, place_food
from envs.solvers.planner import GraspFailed, MultiArmPlanner, PlanningFailed

Solver = Callable[[Any, MultiArmPlanner], dict]

SOLVERS: dict[str, Solver] = {
    "PickMeat-rf": pick_meat.solve,
    "StackCube-rf": stacking.solve_stack_cube,
    "StrikeCube-rf": strike_cube.solve,
    "LiftBarrier-rf": lift_barrier.solve,
    "PassShoe-rf": pass_shoe.solve,
    "PlaceFood-rf": place_food.solve,
    "TwoRobotsStackCube-rf": stacking.solve_stack_on_goal,
    "ThreeRobotsStackCube-rf": stacking.solve_stack_on_goal,
    "CameraAlignment-rf": camera_tasks.solve_camera_alignment,
    "LongPipelineDelivery-rf": pipeline.solve_long_pipeline,
    "TakePhoto-rf": camera_tasks.solve_take_photo,
}
"""Task id -> solver."""


def get_solver(task: str) -> Solver:
    """The solver of ``task``; a clear error lists the tasks that have one."""
    if task not in SOLVERS:
        raise KeyError(f"no motion-planning solver for {task!r}; solvers exist for {sorted(SOLVERS)}")
    return SOLVERS[task]


__all__ = ["SOLVERS", "Solver", "get_solver", "MultiArmPlanner", "PlanningFailed", "GraspFailed"]
