"""``PassShoe-rf``: two Pandas relay a shoe across the table, through its centre, onto a red/white target.

RoboFactory's PassShoe with a primitive shoe. Layout: ``panda-0`` at (0, -0.75) facing +y, ``panda-1`` at
(0, 0.75) facing -y, both in RoboFactory's rest pose. Each arm reaches only its own half of the table, so
the pass is a relay: ``panda-0`` sets the shoe down at the table centre (the midpoint of the two bases), and
``panda-1`` takes it from there to the target.

Objects:

* Shoe: one dynamic actor of three boxes sized from RoboFactory's scaled shoe mesh (0.066 wide, 0.192 long,
  0.093 tall): a sole, a heel-and-upper over the rear part and a lower toe box. In its frame x is the width,
  y the length (toe at +y), z up, the origin at mid-height. Mass 1 kg with inertia 0.1 kg m^2 about each
  axis, friction 0.3 (RoboFactory's). It stands upright, its long axis along world y turned by 9 degrees
  (RoboFactory's orientation), its centre in RoboFactory's one-sided range x, y in (-0.5, -0.3].
* Target: ManiSkill's red/white disc, radius 0.1 m, visual only (kinematic), centre x, y in [0.3, 0.5).
* Table: RoboFactory's (top at z = 0, x up to 1.39 m): ManiSkill's ends at x = 0.47, where a shoe set on a
  target near x = 0.5 would hang over the edge and tip off.

Success rules, both in ``info``:

* ``success`` (RoboFactory's rule): the shoe's centre within 0.1 m (the target radius) of the target's
  centre in the plane. It counts a shoe still held over the target or falling onto it.
* ``success_strict``: ``success``, no arm grasps the shoe, the shoe is at rest and stands on the table
  (centre at most 1 cm above its resting height).

Cameras: ``head_camera_agent<i>`` looks at arm i's half of the table from across it and
``head_camera_global`` has RoboFactory's pose for this task. Physics: 20 Hz simulation and control
(RoboFactory's setting for this task: one physics step per control step). Episode cap: 500 control steps
(RoboFactory's).
"""

from __future__ import annotations

import math

import sapien
import torch

from mani_skill.sensors.camera import CameraConfig
from mani_skill.utils.registration import register_env
from mani_skill.utils.structs.actor import Actor
from mani_skill.utils.structs.types import SimConfig

from envs.tasks.base import GLOBAL_CAMERA, ArmPlacement, BoxPart, RFTableTaskEnv, is_released, is_static
from envs.tasks.rf_scene import RoboFactoryTableSceneBuilder

SHOE_HALF_HEIGHT = 0.0465
"""Half the shoe's height (m): its origin's height when it stands on the table."""
SOLE_COLOR = (0.12, 0.12, 0.12, 1.0)
UPPER_COLOR = (0.16, 0.33, 0.72, 1.0)
SHOE_MASS = 1.0
SHOE_INERTIA = (0.1, 0.1, 0.1)
SHOE_YAW = math.atan2(-0.16, 0.99)
"""Yaw (rad) of the shoe: its long axis (the frame's y) along world (0.16, 0.99), as RoboFactory spawns it."""
GRASP_POINT = (0.0, -0.02, 0.0165)
"""Where a top-down grasp holds the shoe, in its frame: on the upper, 2 cm behind the centre, 3 cm below its top."""
GOAL_RADIUS = 0.1
"""Radius (m) of the target (RoboFactory's); the shoe's centre must lie within it."""
REST_TOLERANCE = 0.01
"""How far (m) above its resting height the shoe's centre may be for ``success_strict``."""
SIM_FREQ = 20
"""Physics steps per second (RoboFactory's PassShoe: one per control step)."""
SHOE_SOLVER_ITERATIONS = 100
"""PhysX position iterations of the shoe's contacts (the scene's default is 15). At one 0.05 s physics step per
control step, 15 iterations let the closing fingers sink through the shoe's side and slip over its top; with
100 they stop 3 mm in, as at ManiSkill's default 100 Hz."""
GLOBAL_CAMERA_POSE = sapien.Pose(p=[-0.698591, 0.434148, 0.558983], q=[0.954989, 0.038711, 0.144233, -0.256309])
"""RoboFactory's ``head_camera_global`` pose for this task."""


def shoe_parts() -> list[BoxPart]:
    """The shoe primitive: sole, heel-and-upper (rear), toe (front), origin at mid-height."""
    h = SHOE_HALF_HEIGHT
    sole_top = -h + 0.016
    return [
        BoxPart((0.033, 0.096, 0.008), (0.0, 0.0, -h + 0.008), SOLE_COLOR),
        BoxPart((0.030, 0.055, (h - sole_top) / 2), (0.0, -0.041, (h + sole_top) / 2), UPPER_COLOR),
        BoxPart((0.030, 0.040, 0.018), (0.0, 0.054, sole_top + 0.018), UPPER_COLOR),
    ]


@register_env("PassShoe-rf", max_episode_steps=500)
class PassShoeEnv(RFTableTaskEnv):
    """``panda-0`` sets the shoe down at the table centre, ``panda-1`` carries it onto the target."""

    SUPPORTED_ROBOTS = [("panda", "panda")]
    arm_placements = (ArmPlacement(0.0, -0.75, math.pi / 2), ArmPlacement(0.0, 0.75, -math.pi / 2))
    render_camera_eye = (0.85, -0.35, 1.05)
    """Above the table's +x end on ``panda-0``'s side: both arms, the shoe's start area and the target in view
    (RoboFactory's render camera stands beside ``panda-1``, which then hides the relay spot)."""
    render_camera_target = (0.0, 0.0, 0.0)
    render_camera_fov = 1.3

    shoe_range = ((-0.5, -0.5), (-0.3, -0.3))
    """((x_low, y_low), (x_high, y_high)) of the shoe centre (RoboFactory's (-0.5, -0.3] on both axes)."""
    goal_range = ((0.3, 0.3), (0.5, 0.5))
    """((x_low, y_low), (x_high, y_high)) of the target centre, RoboFactory's one-sided range."""

    @property
    def _default_sim_config(self) -> SimConfig:
        config = super()._default_sim_config
        config.sim_freq = SIM_FREQ
        config.control_freq = SIM_FREQ
        return config

    @property
    def _default_sensor_configs(self) -> list[CameraConfig]:
        cams = super()._default_sensor_configs
        for cam in cams:
            if cam.uid == GLOBAL_CAMERA:
                cam.pose = GLOBAL_CAMERA_POSE
        return cams

    def _load_scene(self, options: dict) -> None:
        self.table_scene = RoboFactoryTableSceneBuilder(env=self, robot_init_qpos_noise=self.robot_init_qpos_noise)
        self.table_scene.build()
        self._load_objects(options)

    @property
    def relay_xy(self) -> tuple[float, float]:
        """The hand-over spot: midway between the two arm bases (the table centre)."""
        a, b = self.arm_placements
        return ((a.x + b.x) / 2, (a.y + b.y) / 2)

    def _load_objects(self, options: dict) -> None:
        self.shoe: Actor = self.build_box_body("shoe", shoe_parts(), SHOE_MASS, inertia=SHOE_INERTIA)
        for body in self.shoe._bodies:
            body.solver_position_iterations = SHOE_SOLVER_ITERATIONS
        self.goal_region: Actor = self.build_goal("goal_region", GOAL_RADIUS)

    def _initialize_objects(self, env_idx: torch.Tensor, options: dict) -> None:
        xy = self.sample_uniform(env_idx, *self.shoe_range)
        self.place_on_table(self.shoe, xy, SHOE_HALF_HEIGHT, torch.full((len(env_idx),), SHOE_YAW))
        self.place_goal(self.goal_region, self.sample_uniform(env_idx, *self.goal_range))

    def task_actors(self) -> dict[str, Actor]:
        return {"shoe": self.shoe, "goal_region": self.goal_region}

    def evaluate(self) -> dict[str, torch.Tensor]:
        p = self.shoe.pose.p
        on_goal = torch.linalg.norm(p[..., :2] - self.goal_region.pose.p[..., :2], dim=-1) < GOAL_RADIUS
        released = is_released(self.arms, [self.shoe])
        static = is_static(self.shoe)
        on_table = p[..., 2] < SHOE_HALF_HEIGHT + REST_TOLERANCE
        return {
            "success": on_goal,
            "success_strict": on_goal & released & static & on_table,
            "is_shoe_released": released,
            "is_shoe_static": static,
        }


__all__ = ["PassShoeEnv", "GOAL_RADIUS", "GRASP_POINT", "SHOE_HALF_HEIGHT", "SIM_FREQ", "shoe_parts"]
