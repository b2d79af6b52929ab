"""``StackCube-rf``: one Panda stacks cube A on cube B.

Layout (RoboFactory's): ``panda-0`` at (-0.615, 0) facing +x (a plain single agent; :mod:`envs.router`
calls it ``panda-0``). Cubes of edge 0.04 m lie on the table with random yaw: A (blue) at
x in [-0.22, -0.12], y in [-0.10, 0.00]; B (magenta) at x in [-0.05, 0.05], y in [-0.10, 0.00].

``success`` is RoboFactory's rule: A is on B (centres within a half diagonal + 5 mm in xy and one edge
+- 5 mm apart in z; the same flag as ``is_cubeA_on_cubeB``). It counts a cube still held or moving, so
``success_strict`` also needs A static and no longer grasped: a policy that hovers holding the cube does not
score there.

Episode cap: 400 control steps (motion-planned demos take about 215).
"""

from __future__ import annotations

import math

import torch

from mani_skill.utils.registration import register_env
from mani_skill.utils.structs.actor import Actor

from envs.tasks.base import CUBE_HALF_SIZE, ArmPlacement, RFTableTaskEnv, is_released, is_static, is_stacked_on

CUBE_A_COLOR = (0.04, 0.32, 0.97, 1.0)
CUBE_B_COLOR = (0.96, 0.01, 0.83, 1.0)


@register_env("StackCube-rf", max_episode_steps=400)
class StackCubeEnv(RFTableTaskEnv):
    """One arm picks cube A and stacks it on cube B."""

    SUPPORTED_ROBOTS = ["panda"]
    arm_placements = (ArmPlacement(-0.615, 0.0, 0.0),)
    global_camera_eye = (0.45, 0.0, 0.65)
    global_camera_target = (-0.2, 0.0, 0.05)
    render_camera_eye = (0.5, 0.55, 0.55)
    render_camera_target = (-0.15, -0.05, 0.05)

    cube_ranges = {"cubeA": ((-0.22, -0.10), (-0.12, 0.00)), "cubeB": ((-0.05, -0.10), (0.05, 0.00))}
    """Per cube, ((x_low, y_low), (x_high, y_high)) of its start position."""

    def _load_objects(self, options: dict) -> None:
        h = (CUBE_HALF_SIZE,) * 3
        self.cubeA: Actor = self.build_box("cubeA", h, CUBE_A_COLOR)
        self.cubeB: Actor = self.build_box("cubeB", h, CUBE_B_COLOR)

    def _initialize_objects(self, env_idx: torch.Tensor, options: dict) -> None:
        quarter = [-math.pi / 4], [math.pi / 4]
        for name, actor in (("cubeA", self.cubeA), ("cubeB", self.cubeB)):
            xy = self.sample_uniform(env_idx, *self.cube_ranges[name])
            self.place_on_table(actor, xy, CUBE_HALF_SIZE, self.sample_uniform(env_idx, *quarter))

    def task_actors(self) -> dict[str, Actor]:
        return {"cubeA": self.cubeA, "cubeB": self.cubeB}

    def evaluate(self) -> dict[str, torch.Tensor]:
        on_top = is_stacked_on(self.cubeA, self.cubeB)
        static = is_static(self.cubeA)
        released = is_released(self.arms, [self.cubeA])
        return {
            "is_cubeA_on_cubeB": on_top,
            "is_cubeA_static": static,
            "is_cubeA_grasped": ~released,
            "success": on_top,
            "success_strict": on_top & static & released,
        }
