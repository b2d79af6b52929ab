"""``TwoRobotsStackCube-rf``: two Pandas build a two-cube tower on a target.

Layout: the two-arm layout of RoboFactory (``panda-0`` at (0, -0.75) facing +y, ``panda-1`` at (0, 0.75)
facing -y). Cube A (blue) starts on ``panda-0``'s side (x in [-0.10, 0.10], y in [-0.28, -0.18]), cube B
(green) on ``panda-1``'s side (mirrored), the red/white goal disc (radius 0.06 m) between them
(x in [-0.05, 0.05], y in [-0.03, 0.03]). Intended plan: ``panda-0`` puts A on the goal, ``panda-1``
stacks B on A; an arm waiting its turn should move clear of the goal (both rest poses hover 0.13 m
from the centre line).

``success``: A's centre within the goal radius (xy) and B on A (RoboFactory's cube-on-cube test), the
placement alone as RoboFactory's rules test it, so a tower still held counts. ``success_strict`` also needs
neither cube grasped by any arm and both static.

Episode cap: 600 control steps (motion-planned demos take about 350).
"""

from __future__ import annotations

import math

import torch

from mani_skill.utils.registration import register_env
from mani_skill.utils.structs.actor import Actor

from envs.tasks.base import CUBE_HALF_SIZE, ArmPlacement, RFTableTaskEnv, is_released, is_static, is_stacked_on

CUBE_COLORS = {"cubeA": (0.05, 0.16, 0.63, 1.0), "cubeB": (0.0, 0.8, 0.1, 1.0), "cubeC": (0.9, 0.05, 0.05, 1.0)}
GOAL_RADIUS = 0.06
"""Radius (m) of the goal disc; the bottom cube's centre must lie inside it."""
QUARTER_TURN = ([-math.pi / 4], [math.pi / 4])


class StackOnGoalEnv(RFTableTaskEnv):
    """Cubes named in :attr:`cube_ranges` (bottom first) are stacked in order on a goal disc."""

    cube_ranges: dict[str, tuple[tuple[float, float], tuple[float, float]]] = {}
    """Per cube, ((x_low, y_low), (x_high, y_high)) of its start position; bottom cube first."""
    goal_range = ((-0.05, -0.03), (0.05, 0.03))

    def _load_objects(self, options: dict) -> None:
        h = (CUBE_HALF_SIZE,) * 3
        self.cubes: dict[str, Actor] = {name: self.build_box(name, h, CUBE_COLORS[name]) for name in self.cube_ranges}
        for name, actor in self.cubes.items():
            setattr(self, name, actor)
        self.goal_region: Actor = self.build_goal("goal_region", GOAL_RADIUS)

    def _initialize_objects(self, env_idx: torch.Tensor, options: dict) -> None:
        for name, (low, high) in self.cube_ranges.items():
            xy = self.sample_uniform(env_idx, low, high)
            self.place_on_table(self.cubes[name], xy, CUBE_HALF_SIZE, self.sample_uniform(env_idx, *QUARTER_TURN))
        self.place_goal(self.goal_region, self.sample_uniform(env_idx, *self.goal_range))

    def task_actors(self) -> dict[str, Actor]:
        return {**self.cubes, "goal_region": self.goal_region}

    def evaluate(self) -> dict[str, torch.Tensor]:
        names = list(self.cubes)
        bottom = self.cubes[names[0]]
        dist = torch.linalg.norm(bottom.pose.p[..., :2] - self.goal_region.pose.p[..., :2], dim=-1)
        info = {f"{names[0]}_on_goal": dist < GOAL_RADIUS}
        success = info[f"{names[0]}_on_goal"].clone()
        for lower, upper in zip(names[:-1], names[1:]):
            info[f"is_{upper}_on_{lower}"] = is_stacked_on(self.cubes[upper], self.cubes[lower])
            success &= info[f"is_{upper}_on_{lower}"]
        released = is_released(self.arms, list(self.cubes.values()))
        static = torch.stack([is_static(c) for c in self.cubes.values()]).all(dim=0)
        info.update(
            cubes_released=released,
            cubes_static=static,
            success=success,
            success_strict=success & released & static,
        )
        return info


@register_env("TwoRobotsStackCube-rf", max_episode_steps=600)
class TwoRobotsStackCubeEnv(StackOnGoalEnv):
    """``panda-0`` puts cube A on the goal, ``panda-1`` stacks cube B on it."""

    SUPPORTED_ROBOTS = [("panda", "panda")]
    arm_placements = (ArmPlacement(0.0, -0.75, math.pi / 2), ArmPlacement(0.0, 0.75, -math.pi / 2))
    cube_ranges = {
        "cubeA": ((-0.10, -0.28), (0.10, -0.18)),
        "cubeB": ((-0.10, 0.18), (0.10, 0.28)),
    }
    global_camera_eye = (0.55, 0.0, 0.75)
    global_camera_target = (-0.1, 0.0, 0.05)
