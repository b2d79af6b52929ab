"""The photo-camera prop of CameraAlignment-rf and TakePhoto-rf, its pedestal, and the scene they share.

The camera is one dynamic actor of primitive boxes and a cylinder, in its own frame (origin at the centre of
its bottom face, lens along +x, long axis y):

* body: a box 0.09 x 0.24 x 0.08 m;
* lens: a cylinder of radius 0.028 m sticking out 0.05 m in +x, centred :data:`LENS_CENTER`;
* shutter button: a small box on the top face at (+0.035, -0.09), RoboFactory's shutter offset;
* two grips: blocks 0.04 m thick (x) at the ends of the body, centred y = -/+ :data:`GRIP_Y`, one per lifting arm
  (``panda-0`` takes the -y grip, ``panda-1`` the +y grip).

As in RoboFactory the camera has a tiny mass and zero inertia, which PhysX treats as infinite: it can be moved
but never rotated by contacts. It sits on a grey pedestal (a kinematic box of edge 0.12 m, half sunk into the
table, top at z = 0.09) drawn from x in [-0.05, 0.05), y in [-0.1, 0.1); the pedestal is kinematic rather than
static so that the GPU backend can re-pose it every episode (RoboFactory's static pedestal crashes there).
The scene uses RoboFactory's larger table (:class:`~envs.tasks.rf_scene.RoboFactoryTableSceneBuilder`): the
third arm stands at x = 1.0, past the end of ManiSkill's.

"Aimed at the meat" (:meth:`CameraPropTaskEnv.aim`): the meat's centre lies within :data:`AIM_MAX_ANGLE_DEG` of the
lens axis, between :data:`AIM_MIN_DISTANCE` and :data:`AIM_MAX_DISTANCE` in front of the lens.
"""

from __future__ import annotations

import math

import sapien
import sapien.physx as physx
import torch

from mani_skill.utils.structs.actor import Actor

from envs.tasks.base import ArmPlacement, RFTableTaskEnv
from envs.tasks.rf_scene import MEAT_HALF_SIZE, WorldLayoutMixin, build_meat, meat_origin

BODY_HALF_SIZE = (0.045, 0.12, 0.04)
LENS_RADIUS = 0.028
LENS_HALF_LENGTH = 0.025
LENS_CENTER = (BODY_HALF_SIZE[0] + LENS_HALF_LENGTH, 0.0, 0.045)
"""Centre of the lens cylinder in the camera frame."""
LENS_TIP = (BODY_HALF_SIZE[0] + 2 * LENS_HALF_LENGTH, 0.0, 0.045)
"""Centre of the lens's front face, where the aim is measured from."""
SHUTTER_HALF_SIZE = (0.01, 0.01, 0.006)
SHUTTER_XY = (0.035, -0.09)
"""RoboFactory's shutter offset from the camera origin (world frame there; the camera never turns)."""
SHUTTER_TOP = 2 * BODY_HALF_SIZE[2] + 2 * SHUTTER_HALF_SIZE[2]
"""Height of the shutter's top face above the camera's bottom."""
GRIP_HALF_SIZE = (0.02, 0.04, 0.02)
GRIP_Y = BODY_HALF_SIZE[1] + GRIP_HALF_SIZE[1]
"""|y| of the grip centres in the camera frame."""
GRASP_Y = 0.17
"""|y| where the lifting arms grasp the grips (4 cm past the body's ends)."""
GRIP_Z = BODY_HALF_SIZE[2]

PEDESTAL_HALF = 0.06
PEDESTAL_CENTER_Z = 0.03
PEDESTAL_TOP = PEDESTAL_CENTER_Z + PEDESTAL_HALF
PEDESTAL_RANGE = ((-0.05, -0.1), (0.05, 0.1))
"""((x_low, y_low), (x_high, y_high)) of the pedestal (and camera) position, RoboFactory's one-sided range."""

LIFT_HEIGHT = 0.20
"""RoboFactory's rule: camera origin and meat origin both more than this (m) above the robot base."""
AIM_MAX_ANGLE_DEG = 15.0
AIM_MIN_DISTANCE = 0.1
AIM_MAX_DISTANCE = 0.5

CAMERA_COLOR = (0.12, 0.12, 0.14, 1.0)
LENS_COLOR = (0.35, 0.55, 0.75, 1.0)
SHUTTER_COLOR = (0.85, 0.1, 0.1, 1.0)
GRIP_COLOR = (0.9, 0.75, 0.2, 1.0)
_LENS_ALONG_X = [1.0, 0.0, 0.0, 0.0]


def build_camera_prop(scene, name: str, mass: float, friction: float = 0.3) -> Actor:
    """The camera prop (see the module docstring) with total ``mass`` (kg) and zero inertia (rotation locked)."""
    builder = scene.create_actor_builder()
    mat = physx.PhysxMaterial(friction, friction, 0.0)

    def box(half, p, color):
        pose = sapien.Pose(p=list(p))
        builder.add_box_collision(pose=pose, half_size=list(half), material=mat)
        visual = sapien.render.RenderMaterial(base_color=list(color))
        builder.add_box_visual(pose=pose, half_size=list(half), material=visual)

    box(BODY_HALF_SIZE, (0.0, 0.0, BODY_HALF_SIZE[2]), CAMERA_COLOR)
    lens = sapien.Pose(p=list(LENS_CENTER), q=_LENS_ALONG_X)
    builder.add_cylinder_collision(pose=lens, radius=LENS_RADIUS, half_length=LENS_HALF_LENGTH, material=mat)
    builder.add_cylinder_visual(
        pose=lens, radius=LENS_RADIUS, half_length=LENS_HALF_LENGTH,
        material=sapien.render.RenderMaterial(base_color=list(LENS_COLOR)),
    )
    box(SHUTTER_HALF_SIZE, (SHUTTER_XY[0], SHUTTER_XY[1], 2 * BODY_HALF_SIZE[2] + SHUTTER_HALF_SIZE[2]), SHUTTER_COLOR)
    for sign in (-1.0, 1.0):
        box(GRIP_HALF_SIZE, (0.0, sign * GRIP_Y, GRIP_Z), GRIP_COLOR)
    builder.set_mass_and_inertia(mass, sapien.Pose(p=[0.0, 0.0, BODY_HALF_SIZE[2]]), [0.0, 0.0, 0.0])
    builder.initial_pose = sapien.Pose(p=[0.0, 0.0, 2.0 + 0.2 * len(scene.actors)])
    return builder.build(name=name)


def local_point(actor: Actor, local) -> torch.Tensor:
    """World position (num_envs, 3) of the point ``local`` of ``actor``'s frame."""
    T = actor.pose.to_transformation_matrix()
    return T[..., :3, 3] + T[..., :3, :3] @ torch.as_tensor(local, dtype=T.dtype, device=T.device)


class CameraPropTaskEnv(WorldLayoutMixin, RFTableTaskEnv):
    """Two arms lift the camera off its pedestal while a third lifts the meat (CameraAlignment's layout).

    Subclasses set :attr:`camera_mass`, :attr:`meat_mass`, :attr:`meat_range` and the cameras.
    """

    large_table = True
    arm_placements = (
        ArmPlacement(0.0, -0.85, math.pi / 2),
        ArmPlacement(0.0, 0.85, -math.pi / 2),
        ArmPlacement(1.0, 0.0, math.pi),
    )
    camera_mass = 0.001
    """kg; RoboFactory's CameraAlignment value (TakePhoto: 0.01)."""
    meat_mass = 0.1
    meat_friction = 0.3
    meat_range = ((0.3, -0.05), (0.4, 0.05))
    """((x_low, y_low), (x_high, y_high)) of the meat's start position."""
    meat_yaw = math.pi
    """RoboFactory turns the meat by about 180 degrees: its thin axis lies along world y."""
    render_camera_eye = (0.9, -1.0, 0.9)
    render_camera_target = (0.1, 0.0, 0.15)

    def _load_objects(self, options: dict) -> None:
        builder = self.scene.create_actor_builder()
        half = [PEDESTAL_HALF] * 3
        builder.add_box_collision(half_size=half)
        builder.add_box_visual(half_size=half, material=sapien.render.RenderMaterial(base_color=[0.5, 0.5, 0.5, 1]))
        builder.initial_pose = sapien.Pose(p=[0.0, 0.0, PEDESTAL_CENTER_Z])
        self.pedestal: Actor = builder.build_kinematic(name="pedestal")
        self.camera: Actor = build_camera_prop(self.scene, "camera", self.camera_mass)
        self.meat: Actor = build_meat(self.scene, "meat", self.meat_mass, self.meat_friction, self.meat_friction)

    def _initialize_objects(self, env_idx: torch.Tensor, options: dict) -> None:
        xy = self.sample_uniform(env_idx, *PEDESTAL_RANGE)
        self.place_on_table(self.pedestal, xy, PEDESTAL_CENTER_Z)
        self.place_on_table(self.camera, xy, PEDESTAL_TOP + 1e-4)
        meat_xy = self.sample_uniform(env_idx, *self.meat_range)
        yaw = torch.full((len(env_idx),), self.meat_yaw, device=self.device)
        self.place_on_table(self.meat, meat_xy, MEAT_HALF_SIZE[2], yaw)

    def task_actors(self) -> dict[str, Actor]:
        return {"camera": self.camera, "meat": self.meat, "pedestal": self.pedestal}

    def lens_tip(self) -> torch.Tensor:
        """World position (num_envs, 3) of the front of the lens."""
        return local_point(self.camera, LENS_TIP)

    def lens_axis(self) -> torch.Tensor:
        """World direction (num_envs, 3) the lens points in (the camera's +x)."""
        return self.camera.pose.to_transformation_matrix()[..., :3, 0]

    def aim(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Angle (deg) between the lens axis and the direction from the lens to the meat's centre, and that
        distance (m), per env."""
        to_meat = self.meat.pose.p - self.lens_tip()
        dist = torch.linalg.norm(to_meat, dim=-1)
        cos = (to_meat * self.lens_axis()).sum(-1) / dist.clamp(min=1e-9)
        return torch.rad2deg(torch.arccos(cos.clamp(-1.0, 1.0))), dist

    def evaluate(self) -> dict[str, torch.Tensor]:
        base_z = self.agent.agents[0].robot.pose.p[..., 2]
        camera_lifted = self.camera.pose.p[..., 2] > base_z + LIFT_HEIGHT
        meat_lifted = meat_origin(self.meat)[..., 2] > base_z + LIFT_HEIGHT
        angle, dist = self.aim()
        aimed = (angle < AIM_MAX_ANGLE_DEG) & (dist > AIM_MIN_DISTANCE) & (dist < AIM_MAX_DISTANCE)
        return {
            "camera_lifted": camera_lifted,
            "meat_lifted": meat_lifted,
            "aim_angle_deg": angle,
            "aim_distance": dist,
            "camera_aimed": aimed,
        }


def shutter_top(camera: Actor) -> torch.Tensor:
    """World position (num_envs, 3) of the centre of the shutter button's top face."""
    return local_point(camera, (SHUTTER_XY[0], SHUTTER_XY[1], SHUTTER_TOP))


__all__ = [
    "AIM_MAX_ANGLE_DEG",
    "AIM_MAX_DISTANCE",
    "AIM_MIN_DISTANCE",
    "CameraPropTaskEnv",
    "GRASP_Y",
    "LIFT_HEIGHT",
    "build_camera_prop",
    "local_point",
    "shutter_top",
]
