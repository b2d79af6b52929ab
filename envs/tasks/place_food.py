"""``PlaceFood-rf``: one Panda holds a pot's lid up while the other drops a piece of meat into the pot.

Layout (RoboFactory's): ``panda-0`` at (0, -0.75) facing +y, ``panda-1`` at (0, 0.75) facing -y, both starting
with the elbow more folded than the default (joint 4 = -3pi/4). The pot is an articulation built from
primitives with a fixed root: a round body (bottom disc, a ring of :data:`WALL_SEGMENTS` wall boxes, two side
handles; outer radius 0.14 m, rim at 0.16 m) and a lid link (a disc of radius 0.145 m with a bar knob on top)
on a prismatic joint along the pot's z axis (``lid_joint``, 0 = closed, up to :data:`LID_TRAVEL`). The pot's
root (the centre of its bottom, on the table) is drawn from x in [-0.15, 0.15), y = 0.05, turned 85 degrees
about z; the meat slab (8.4 x 3.8 x 6.9 cm, 0.5 kg, static friction 0.5) stands 0.25 m from the pot towards
``panda-0`` with the same heading (RoboFactory's spawn ranges are one-sided: [p, p + scale)).

Success rules, both in ``info``:

* ``success`` (RoboFactory's): the meat's origin (RoboFactory's mesh origin, 7.5 mm above the slab's bottom)
  lower than 0.1 m above the robot base and within 0.1 m
  (xy) of the pot's root. It also counts meat still held, or still moving.
* ``success_strict``: ``success`` and the meat released by both arms and at rest, and the lid back down
  (joint below :data:`LID_CLOSED_TOL`).

Physics at 20 Hz (one substep per control step, RoboFactory's setting); episode cap 500 control steps.
"""

from __future__ import annotations

import math

import sapien
import sapien.physx as physx
import torch

from mani_skill.utils.registration import register_env
from mani_skill.utils.structs.actor import Actor
from mani_skill.utils.structs.articulation import Articulation
from mani_skill.utils.structs.pose import Pose
from mani_skill.utils.structs.types import GPUMemoryConfig, SimConfig

from envs.tasks.base import ArmPlacement, RFTableTaskEnv, is_released, is_static
from envs.tasks.rf_scene import (
    MEAT_HALF_SIZE,
    WorldLayoutMixin,
    build_meat,
    look_at_pose,
    meat_origin,
    start_qpos,
    world_pose,
)

POT_RADIUS = 0.14
"""Outer radius (m) of the pot body."""
WALL_THICKNESS = 0.01
BOTTOM_THICKNESS = 0.01
RIM_HEIGHT = 0.16
"""Height (m) of the rim above the pot's root; the closed lid rests there."""
WALL_SEGMENTS = 16
LID_RADIUS = 0.145
LID_THICKNESS = 0.01
KNOB_HALF_SIZE = (0.03, 0.01, 0.015)
"""Half extents (m) of the knob bar on the lid, long axis along the pot's x; the gripper closes across its y."""
LID_TRAVEL = 0.35
"""Upper limit (m) of the lid's prismatic joint."""
LID_CLOSED_TOL = 0.01
"""Largest lid opening (m) that counts as closed for ``success_strict``."""
POT_YAW = math.radians(85.0)
POT_X_RANGE = (-0.15, 0.15)
POT_Y = 0.05
MEAT_OFFSET_Y = -0.25
"""The meat starts this far (m, world y) from the pot's root."""
MEAT_MASS = 0.5
HEIGHT_LIMIT = 0.1
"""RoboFactory's rule: meat centre below this height (m) above the robot base ..."""
DISTANCE_LIMIT = 0.1
"""... and within this distance (m, xy) of the pot's root."""

POT_COLOR = (0.25, 0.27, 0.3, 1.0)
LID_COLOR = (0.55, 0.58, 0.62, 1.0)
_X_TO_Z = [math.sqrt(0.5), 0.0, -math.sqrt(0.5), 0.0]
"""Rotation taking local x to +z (SAPIEN cylinders and joint axes lie along x)."""


def build_pot(scene, name: str = "pot") -> Articulation:
    """The pot articulation: fixed root ``body`` and a ``lid`` link on the prismatic ``lid_joint`` (+ = up)."""
    builder = scene.create_articulation_builder()
    body = builder.create_link_builder()
    body.set_name("body")
    mat = sapien.render.RenderMaterial(base_color=list(POT_COLOR))
    phys = physx.PhysxMaterial(0.5, 0.5, 0.0)

    def box(link, half, p, q=(1.0, 0.0, 0.0, 0.0), material=mat):
        pose = sapien.Pose(p=list(p), q=list(q))
        link.add_box_collision(pose=pose, half_size=list(half), material=phys)
        link.add_box_visual(pose=pose, half_size=list(half), material=material)

    bottom = sapien.Pose(p=[0, 0, BOTTOM_THICKNESS / 2], q=_X_TO_Z)
    body.add_cylinder_collision(pose=bottom, radius=POT_RADIUS, half_length=BOTTOM_THICKNESS / 2, material=phys)
    body.add_cylinder_visual(pose=bottom, radius=POT_RADIUS, half_length=BOTTOM_THICKNESS / 2, material=mat)
    wall_h = (RIM_HEIGHT - BOTTOM_THICKNESS) / 2
    r = POT_RADIUS - WALL_THICKNESS / 2
    tangential = POT_RADIUS * math.tan(math.pi / WALL_SEGMENTS) + 0.002
    for k in range(WALL_SEGMENTS):
        a = 2 * math.pi * k / WALL_SEGMENTS
        q = [math.cos(a / 2), 0.0, 0.0, math.sin(a / 2)]
        centre = (r * math.cos(a), r * math.sin(a), BOTTOM_THICKNESS + wall_h)
        box(body, (WALL_THICKNESS / 2, tangential, wall_h), centre, q)
    for sign in (-1.0, 1.0):
        box(body, (0.025, 0.03, 0.01), (sign * (POT_RADIUS + 0.02), 0.0, RIM_HEIGHT - 0.03))

    lid = builder.create_link_builder(body)
    lid.set_name("lid")
    lid_mat = sapien.render.RenderMaterial(base_color=list(LID_COLOR))
    disc = sapien.Pose(p=[0, 0, LID_THICKNESS / 2], q=_X_TO_Z)
    lid.add_cylinder_collision(pose=disc, radius=LID_RADIUS, half_length=LID_THICKNESS / 2, material=phys, density=300)
    lid.add_cylinder_visual(pose=disc, radius=LID_RADIUS, half_length=LID_THICKNESS / 2, material=lid_mat)
    knob = sapien.Pose(p=[0, 0, LID_THICKNESS + KNOB_HALF_SIZE[2]])
    lid.add_box_collision(pose=knob, half_size=list(KNOB_HALF_SIZE), material=phys, density=300)
    knob_mat = sapien.render.RenderMaterial(base_color=[0.1, 0.1, 0.1, 1.0])
    lid.add_box_visual(pose=knob, half_size=list(KNOB_HALF_SIZE), material=knob_mat)
    lid.set_joint_name("lid_joint")
    lid.set_joint_properties(
        "prismatic",
        limits=[[0.0, LID_TRAVEL]],
        pose_in_parent=sapien.Pose(p=[0, 0, RIM_HEIGHT], q=_X_TO_Z),
        pose_in_child=sapien.Pose(q=_X_TO_Z),
        friction=0.0,
        damping=1.0,
    )
    builder.initial_pose = sapien.Pose(p=[0.0, POT_Y, 0.0])
    return builder.build(name, fix_root_link=True)


@register_env("PlaceFood-rf", max_episode_steps=500)
class PlaceFoodEnv(WorldLayoutMixin, RFTableTaskEnv):
    """``panda-1`` lifts the pot's lid by its knob, ``panda-0`` drops the meat into the pot."""

    SUPPORTED_ROBOTS = [("panda", "panda")]
    arm_placements = (ArmPlacement(0.0, -0.75, math.pi / 2), ArmPlacement(0.0, 0.75, -math.pi / 2))
    arm_start_qpos = (start_qpos(-3 * math.pi / 4), start_qpos(-3 * math.pi / 4))
    camera_world_poses = {
        "head_camera_agent0": look_at_pose([-0.5, 0.115, 0.4], [0.0, -0.235, 0.1]),
        "head_camera_agent1": look_at_pose([0.5, -0.115, 0.4], [0.0, 0.235, 0.1]),
        "head_camera_global": world_pose([0.538897, 0.0328311, 0.7419], [0.00132558, -0.278757, 0.00042972, 0.960361]),
    }
    render_camera_eye = (0.85, 0.2, 0.7)
    render_camera_target = (-0.05, 0.0, 0.1)

    @property
    def _default_sim_config(self) -> SimConfig:
        return SimConfig(
            sim_freq=20,
            control_freq=20,
            gpu_memory_config=GPUMemoryConfig(found_lost_pairs_capacity=2**25, max_rigid_patch_count=2**18),
        )

    def _load_objects(self, options: dict) -> None:
        self.pot: Articulation = build_pot(self.scene)
        self.lid = self.pot.links_map["lid"]
        self.lid_joint = self.pot.joints_map["lid_joint"]
        self.meat: Actor = build_meat(self.scene, "meat", MEAT_MASS, 0.5, 0.3)

    def _initialize_objects(self, env_idx: torch.Tensor, options: dict) -> None:
        b = len(env_idx)
        x = self.sample_uniform(env_idx, [POT_X_RANGE[0]], [POT_X_RANGE[1]])
        pot_xy = torch.cat([x, torch.full((b, 1), POT_Y, device=self.device)], dim=1)
        yaw = torch.full((b,), POT_YAW, device=self.device)
        half = yaw / 2
        zeros = torch.zeros_like(half)
        q = torch.stack([torch.cos(half), zeros, zeros, torch.sin(half)], dim=1)
        p = torch.cat([pot_xy, torch.zeros((b, 1), device=self.device)], dim=1)
        self.pot.set_pose(Pose.create_from_pq(p=p, q=q))
        self.pot.set_qpos(torch.zeros((b, 1), device=self.device))
        self.pot.set_qvel(torch.zeros((b, 1), device=self.device))
        meat_xy = pot_xy + torch.tensor([0.0, MEAT_OFFSET_Y], device=self.device)
        self.place_on_table(self.meat, meat_xy, MEAT_HALF_SIZE[2], yaw)

    def task_actors(self) -> dict[str, Actor]:
        return {"meat": self.meat, "pot": self.pot, "lid": self.lid}

    def lid_opening(self) -> torch.Tensor:
        """How far (m) the lid is lifted off the rim, per env."""
        return self.pot.get_qpos()[..., 0]

    def evaluate(self) -> dict[str, torch.Tensor]:
        base_z = self.agent.agents[0].robot.pose.p[..., 2]
        meat = meat_origin(self.meat)
        dist = torch.linalg.norm(meat[..., :2] - self.pot.pose.p[..., :2], dim=-1)
        success = (meat[..., 2] < base_z + HEIGHT_LIMIT) & (dist < DISTANCE_LIMIT)
        released = is_released(self.arms, [self.meat])
        static = is_static(self.meat)
        lid_closed = self.lid_opening() < LID_CLOSED_TOL
        return {
            "success": success,
            "success_strict": success & released & static & lid_closed,
            "meat_released": released,
            "meat_static": static,
            "lid_closed": lid_closed,
            "lid_grasped": self.agent.agents[1].is_grasping(self.lid),
        }


__all__ = ["PlaceFoodEnv", "build_pot", "LID_TRAVEL", "LID_CLOSED_TOL", "HEIGHT_LIMIT", "DISTANCE_LIMIT"]
