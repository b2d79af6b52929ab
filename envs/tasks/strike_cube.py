"""``StrikeCube-rf``: one Panda picks up a hammer and brings its striking face down onto a cube.

RoboFactory's StrikeCube with a primitive hammer. Layout: ``panda-0`` at (-0.615, 0) facing +x, started in
RoboFactory's pose for this task (joint 4 at -pi/2 instead of -5pi/8; a plain single agent, called
``panda-0`` by :mod:`envs.router`).

Objects:

* Hammer: one dynamic actor of two boxes, sized from RoboFactory's scaled hammer mesh (0.027 x 0.175 x
  0.134 m overall). In the hammer's frame the handle (0.027 x 0.160 x 0.027 m) runs along y, centred on the
  origin (the grasp point); the head (0.027 x 0.040 x 0.134 m) crosses it along z at the +y end, its +z
  face is the striking face (:data:`FACE_POINT`, RoboFactory's "functional point"). Mass 0.05 kg and
  inertia 0.1 kg m^2 about each axis (RoboFactory's), friction 0.3. The hammer stands head-down on its
  striking face with the handle level, as RoboFactory spawns it, but with the centre of mass in the head so
  that this stance is stable (RoboFactory's sits mid-handle: its hammer slowly tips onto the handle end).
  Heading fixed (the handle points from its free end towards the head along world (0.84, -0.54), as in
  RoboFactory); origin x in [0, 0.06), y in [0, 0.15) (RoboFactory's one-sided range).
* Cube: edge 0.04 m, RoboFactory's colour, x in [0.10, 0.15), y in [-0.10, 0.10), yaw uniform. RoboFactory's
  ranges let the hammer's footprint overlap the cube; here a layout whose cube comes within
  :data:`SPAWN_CLEARANCE` of the hammer is redrawn (from the same seeded generator, so seeds still repeat).

Success rules, both in ``info``:

* ``success`` (RoboFactory's rule): the striking face's centre within 0.025 m of the centre of the cube's
  top face. It also counts a face hovering up to 2.5 cm above the cube, or a hammer dropped there.
* ``success_strict``: ``success``, the hammer touches the cube (a contact force between them) and the arm
  still grasps the hammer.

Physics: ManiSkill's defaults (100 Hz simulation, 20 Hz control), as RoboFactory. Episode cap: 350 control
steps (RoboFactory's).
"""

from __future__ import annotations

import math

import numpy as np
import torch

from mani_skill.utils.registration import register_env
from mani_skill.utils.structs.actor import Actor
from mani_skill.utils.structs.pose import Pose
from transforms3d.quaternions import qmult

from envs.tasks.base import CUBE_HALF_SIZE, PANDA_INIT_QPOS, ArmPlacement, BoxPart, RFTableTaskEnv
from envs.tasks.pick_meat import offset_point

HANDLE_HALF_SIZE = (0.0134, 0.080, 0.0134)
HEAD_HALF_SIZE = (0.0134, 0.020, 0.067)
HEAD_CENTER = (0.0, 0.075, -0.008)
"""Centre of the head box in the hammer frame (the handle is centred on the origin)."""
FACE_POINT = (0.0, 0.075, HEAD_CENTER[2] + HEAD_HALF_SIZE[2])
"""Centre of the striking face (the head's +z face) in the hammer frame."""
HAMMER_MASS = 0.05
HAMMER_INERTIA = (0.1, 0.1, 0.1)
HANDLE_COLOR = (0.55, 0.35, 0.17, 1.0)
HEAD_COLOR = (0.35, 0.36, 0.38, 1.0)
HANDLE_HEADING = math.atan2(-0.54, 0.84)
"""World heading (rad) of the hammer's +y axis (from the handle's free end towards the head)."""
STRIKE_RADIUS = 0.025
"""RoboFactory's success distance (m) between the striking face and the cube's top face centre."""
CUBE_COLOR = (0.7333333333, 0.4549019608, 0.6862745098, 1.0)
SPAWN_CLEARANCE = 0.03
"""Smallest gap (m) between the cube and the hammer's footprint at reset."""
STRIKE_INIT_QPOS = PANDA_INIT_QPOS.copy()
STRIKE_INIT_QPOS[3] = -np.pi / 2
"""RoboFactory's start pose for this task: the rest pose with joint 4 at -pi/2."""
MAX_REDRAWS = 100


def hammer_parts() -> list[BoxPart]:
    """The hammer primitive: handle along the frame's y axis, head across it at the +y end."""
    return [BoxPart(HANDLE_HALF_SIZE, color=HANDLE_COLOR), BoxPart(HEAD_HALF_SIZE, HEAD_CENTER, HEAD_COLOR)]


def head_down_quat() -> np.ndarray:
    """(w, x, y, z) of the spawn orientation: half a turn about the hammer's y axis (face down), then the heading."""
    yaw = HANDLE_HEADING - math.pi / 2  # after the flip the hammer's y axis still points along world +y
    flip = np.array([0.0, 0.0, 1.0, 0.0])  # half a turn about y
    return qmult(np.array([math.cos(yaw / 2), 0.0, 0.0, math.sin(yaw / 2)]), flip)


def segment_distance(points: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Distance (n,) from each 2-D point (n, 2) to the segment a-b (n, 2 each)."""
    ab = b - a
    t = (((points - a) * ab).sum(-1) / (ab * ab).sum(-1).clamp(min=1e-12)).clamp(0.0, 1.0)
    return torch.linalg.norm(points - (a + t[:, None] * ab), dim=-1)


@register_env("StrikeCube-rf", max_episode_steps=350)
class StrikeCubeEnv(RFTableTaskEnv):
    """One arm strikes the cube's top face with the hammer's face."""

    SUPPORTED_ROBOTS = ["panda"]
    arm_placements = (ArmPlacement(-0.615, 0.0, 0.0),)
    init_qpos = STRIKE_INIT_QPOS
    cube_half_size = CUBE_HALF_SIZE
    global_camera_eye = (0.45, 0.0, 0.65)
    global_camera_target = (-0.2, 0.0, 0.05)
    render_camera_eye = (0.6, 0.7, 0.6)
    """RoboFactory's ``render_camera`` (looking at (0, 0, 0.35), fov 1)."""
    render_camera_target = (0.0, 0.0, 0.35)

    hammer_range = ((0.0, 0.0), (0.06, 0.15))
    """((x_low, y_low), (x_high, y_high)) of the hammer origin (mid-handle), RoboFactory's one-sided range."""
    cube_range = ((0.10, -0.10), (0.15, 0.10))
    """((x_low, y_low), (x_high, y_high)) of the cube centre, RoboFactory's one-sided range."""

    def _load_objects(self, options: dict) -> None:
        self.hammer: Actor = self.build_box_body(
            "hammer", hammer_parts(), HAMMER_MASS, inertia=HAMMER_INERTIA, com=HEAD_CENTER
        )
        self.cube: Actor = self.build_box("cube", (CUBE_HALF_SIZE,) * 3, CUBE_COLOR)
        self._hammer_quat = head_down_quat()

    def hammer_footprint(self, origin_xy: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Ends (n, 2) of the hammer's axis in plan (handle's free end, head's far side) for origins (n, 2)."""
        axis = torch.tensor([math.cos(HANDLE_HEADING), math.sin(HANDLE_HEADING)], device=origin_xy.device)
        far = HEAD_CENTER[1] + HEAD_HALF_SIZE[1]
        return origin_xy - HANDLE_HALF_SIZE[1] * axis, origin_xy + far * axis

    def _initialize_objects(self, env_idx: torch.Tensor, options: dict) -> None:
        hammer_xy = self.sample_uniform(env_idx, *self.hammer_range)
        cube_xy = self.sample_uniform(env_idx, *self.cube_range)
        reach = math.sqrt(2) * CUBE_HALF_SIZE + HANDLE_HALF_SIZE[0] + SPAWN_CLEARANCE
        for _ in range(MAX_REDRAWS):
            clash = segment_distance(cube_xy, *self.hammer_footprint(hammer_xy)) < reach
            if not bool(clash.any()):
                break
            idx = torch.nonzero(clash).reshape(-1)
            hammer_xy[idx] = self.sample_uniform(env_idx[idx], *self.hammer_range)
            cube_xy[idx] = self.sample_uniform(env_idx[idx], *self.cube_range)
        yaw = self.sample_uniform(env_idx, [-math.pi], [math.pi])
        self.place_on_table(self.cube, cube_xy, CUBE_HALF_SIZE, yaw)
        b = len(env_idx)
        z = FACE_POINT[2]  # the origin's height when the face (flipped to the bottom) rests on the table
        p = torch.cat([hammer_xy, torch.full((b, 1), z, device=hammer_xy.device)], dim=1)
        q = torch.as_tensor(self._hammer_quat, dtype=torch.float32, device=hammer_xy.device)[None].repeat(b, 1)
        self.hammer.set_pose(Pose.create_from_pq(p=p, q=q))

    def task_actors(self) -> dict[str, Actor]:
        return {"hammer": self.hammer, "cube": self.cube}

    def face_point(self) -> torch.Tensor:
        """World position (num_envs, 3) of the striking face's centre."""
        return offset_point(self.hammer, FACE_POINT)

    def evaluate(self) -> dict[str, torch.Tensor]:
        top = self.cube.pose.p + torch.tensor([0.0, 0.0, CUBE_HALF_SIZE], device=self.device)
        near = torch.linalg.norm(self.face_point() - top, dim=-1) < STRIKE_RADIUS
        forces = self.scene.get_pairwise_contact_forces(self.hammer, self.cube)
        touching = torch.linalg.norm(forces, dim=-1) > 1e-2
        grasped = self.agent.is_grasping(self.hammer)
        return {
            "success": near,
            "success_strict": near & touching & grasped,
            "is_hammer_grasped": grasped,
            "is_hammer_touching_cube": touching,
        }


__all__ = ["StrikeCubeEnv", "FACE_POINT", "STRIKE_RADIUS", "STRIKE_INIT_QPOS", "hammer_parts"]
