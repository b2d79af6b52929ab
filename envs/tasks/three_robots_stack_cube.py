"""``ThreeRobotsStackCube-rf``: three Pandas build a three-cube tower on a target.

Layout: RoboFactory's two facing arms (``panda-0`` at (0, -0.75) facing +y, ``panda-1`` at (0, 0.75)
facing -y) and a third, ``panda-2``, at (-0.70, 0) facing +x, at the end of ManiSkill's table (RoboFactory
puts it on the opposite side, past the end of this table). Cube A (blue) starts on ``panda-0``'s side,
B (green) on ``panda-1``'s side, C (red) in front of ``panda-2`` (x in [-0.35, -0.25], y in [-0.08, 0.08]);
the goal disc (radius 0.06 m) lies between them. Intended plan: ``panda-0`` puts A on the goal,
``panda-1`` stacks B on A, ``panda-2`` stacks C on B; arms waiting their turn should move clear of the
goal.

``success``: A's centre within the goal radius (xy), B on A and C on B (RoboFactory's cube-on-cube test),
the placement alone as RoboFactory's rules test it (a tower still held counts). ``success_strict`` also
needs no cube grasped by any arm and all static.

Episode cap: 800 control steps (RoboFactory's).
"""

from __future__ import annotations

import math

from mani_skill.utils.registration import register_env

from envs.tasks.base import ArmPlacement
from envs.tasks.two_robots_stack_cube import StackOnGoalEnv


@register_env("ThreeRobotsStackCube-rf", max_episode_steps=800)
class ThreeRobotsStackCubeEnv(StackOnGoalEnv):
    """``panda-0`` places A on the goal, ``panda-1`` stacks B on A, ``panda-2`` stacks C on B."""

    SUPPORTED_ROBOTS = [("panda", "panda", "panda")]
    arm_placements = (
        ArmPlacement(0.0, -0.75, math.pi / 2),
        ArmPlacement(0.0, 0.75, -math.pi / 2),
        ArmPlacement(-0.70, 0.0, 0.0),
    )
    cube_ranges = {
        "cubeA": ((-0.10, -0.28), (0.10, -0.18)),
        "cubeB": ((-0.10, 0.18), (0.10, 0.28)),
        "cubeC": ((-0.35, -0.08), (-0.25, 0.08)),
    }
    global_camera_eye = (0.6, 0.0, 0.8)
    global_camera_target = (-0.2, 0.0, 0.0)
    render_camera_eye = (0.85, 0.3, 0.9)
    render_camera_target = (-0.25, 0.0, 0.0)
