"""``LongPipelineDelivery-rf``: four Pandas in a row pass a cube from one end of the table to the other.

RoboFactory's LongPipelineDelivery (four arms in a row hand a shoe along to a goal) with a cube.
Layout: the arms stand side by side at x = -0.615 facing +x, at y = -0.9, -0.3, 0.3, 0.9
(``panda-0`` ... ``panda-3``). The cube (edge 0.04 m) starts in front of ``panda-3``
(x in [-0.20, -0.10], y in [0.95, 1.05], random yaw); the red/white goal disc (radius 0.06 m) lies in
front of ``panda-0`` (x in [-0.20, -0.10], y in [-1.05, -0.95]). Three grey relay pads (visual only) mark
the hand-over spots between neighbours, at x = -0.15 and y = 0.6, 0.0, -0.6: arm i picks the cube
up where arm i+1 left it and puts it down on the next pad (``panda-0`` on the goal). Each arm only ever
reaches 0.3-0.5 m to its sides, well inside the Panda's reach.

``success``: the cube's centre within the goal radius (xy), on the table (z < 0.03 m): the placement
alone, the kind of test RoboFactory's rules make (a cube still held counts). ``success_strict`` also needs
it released and static. ``info`` also has ``stage``: how many relay pads (counted from ``panda-3``'s end)
the cube has passed, a progress measure for partial credit.

Episode cap: 1500 control steps (RoboFactory's).
"""

from __future__ import annotations

import math

import sapien
import torch

from mani_skill.utils.registration import register_env
from mani_skill.utils.structs.actor import Actor

from envs.tasks.base import CUBE_HALF_SIZE, ArmPlacement, RFTableTaskEnv, is_released, is_static

ARM_YS = (-0.9, -0.3, 0.3, 0.9)
RELAY_XY = ((-0.15, 0.6), (-0.15, 0.0), (-0.15, -0.6))
"""Hand-over pads, from ``panda-3``'s end to ``panda-0``'s."""
GOAL_RADIUS = 0.06
CUBE_START_RANGE = ((-0.20, 0.95), (-0.10, 1.05))
"""((x_low, y_low), (x_high, y_high)) of the cube's start, in front of ``panda-3``."""
GOAL_RANGE = ((-0.20, -1.05), (-0.10, -0.95))
"""((x_low, y_low), (x_high, y_high)) of the goal centre, in front of ``panda-0``."""
PAD_HALF_SIZE = 0.04
CUBE_COLOR = (0.73, 0.45, 0.69, 1.0)


@register_env("LongPipelineDelivery-rf", max_episode_steps=1500)
class LongPipelineDeliveryEnv(RFTableTaskEnv):
    """Four arms relay a cube from ``panda-3``'s end of the table to the goal at ``panda-0``'s end."""

    SUPPORTED_ROBOTS = [("panda", "panda", "panda", "panda")]
    arm_placements = tuple(ArmPlacement(-0.615, y, 0.0) for y in ARM_YS)
    agent_camera_eye_local = (0.8, 0.0, 0.55)
    """Across the table, straight in front of the arm: sees both of its hand-over spots."""
    agent_camera_target_local = (0.4, 0.0, 0.05)
    global_camera_eye = (0.45, 0.0, 1.05)
    global_camera_target = (-0.4, 0.0, 0.0)
    render_camera_eye = (0.9, 0.3, 1.2)
    render_camera_target = (-0.35, 0.0, 0.0)
    render_camera_fov = 1.5

    def _load_objects(self, options: dict) -> None:
        self.cube: Actor = self.build_box("cube", (CUBE_HALF_SIZE,) * 3, CUBE_COLOR)
        self.goal_region: Actor = self.build_goal("goal_region", GOAL_RADIUS)
        self.relay_pads: list[Actor] = []
        for k, (x, y) in enumerate(RELAY_XY):
            builder = self.scene.create_actor_builder()
            builder.add_box_visual(
                half_size=[PAD_HALF_SIZE, PAD_HALF_SIZE, 5e-4],
                material=sapien.render.RenderMaterial(base_color=[0.55, 0.55, 0.55, 1.0]),
            )
            builder.initial_pose = sapien.Pose(p=[x, y, 5e-4])
            self.relay_pads.append(builder.build_kinematic(name=f"relay_pad_{k}"))

    def _initialize_objects(self, env_idx: torch.Tensor, options: dict) -> None:
        xy = self.sample_uniform(env_idx, *CUBE_START_RANGE)
        yaw = self.sample_uniform(env_idx, [-math.pi / 4], [math.pi / 4])
        self.place_on_table(self.cube, xy, CUBE_HALF_SIZE, yaw)
        self.place_goal(self.goal_region, self.sample_uniform(env_idx, *GOAL_RANGE))

    def task_actors(self) -> dict[str, Actor]:
        return {"cube": self.cube, "goal_region": self.goal_region}

    def evaluate(self) -> dict[str, torch.Tensor]:
        p = self.cube.pose.p
        in_goal = torch.linalg.norm(p[..., :2] - self.goal_region.pose.p[..., :2], dim=-1) < GOAL_RADIUS
        on_table = p[..., 2] < CUBE_HALF_SIZE + 0.01
        released = is_released(self.arms, [self.cube])
        static = is_static(self.cube)
        stage = torch.zeros_like(p[..., 1], dtype=torch.int32)
        for _, y in RELAY_XY:
            stage += (p[..., 1] < y + 0.05).int()  # within reach of a pad or beyond it
        return {
            "cube_in_goal": in_goal,
            "cube_released": released,
            "stage": stage,
            "success": in_goal & on_table,
            "success_strict": in_goal & on_table & released & static,
        }
