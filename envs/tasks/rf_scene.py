"""Scene pieces shared by the RoboFactory rebuilds whose layouts are given in world coordinates.

PlaceFood-rf, CameraAlignment-rf and TakePhoto-rf take RoboFactory's numbers as they are: cameras at fixed
world poses (:class:`WorldLayoutMixin.camera_world_poses`), start joints per arm
(:attr:`WorldLayoutMixin.arm_start_qpos`, RoboFactory folds some arms more than the default) and, where
objects lie past the end of ManiSkill's table, RoboFactory's larger table (:class:`RoboFactoryTableSceneBuilder`).
:func:`build_meat` is PickMeat-rf's steak box with another task's mass and friction.
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Sequence

import numpy as np
import sapien
import sapien.physx as physx
import torch
from transforms3d.euler import euler2quat

from mani_skill.utils import sapien_utils
from mani_skill.utils.building.ground import build_ground
from mani_skill.utils.scene_builder.table import TableSceneBuilder
from mani_skill.utils.structs.actor import Actor
from mani_skill.utils.structs.pose import Pose

from envs.tasks.base import PANDA_INIT_QPOS
from envs.tasks.pick_meat import MEAT_COLOR, MEAT_HALF_SIZE, MEAT_REFERENCE_OFFSET, offset_point

RF_TABLE_HALF_SIZE = (1.51125, 3.0225, 0.45982145)
"""Half extents (m, world x, y, z) of RoboFactory's table collision box (its table model at scale 4.375)."""
RF_TABLE_CENTER_X = -0.12


def start_qpos(joint4: float) -> np.ndarray:
    """RoboFactory's start joints with the fourth (elbow) joint set to ``joint4`` (rad), fingers open."""
    q = PANDA_INIT_QPOS.copy()
    q[3] = joint4
    return q


def build_meat(scene, name: str, mass: float, static_friction: float, dynamic_friction: float) -> Actor:
    """PickMeat-rf's steak box (origin at its centre) with the given mass (kg) and friction; its inertia follows from
    a uniform density (RoboFactory's 0.1 kg m^2 would keep a meat dropped tilted into the pot from settling)."""
    half = list(MEAT_HALF_SIZE)
    builder = scene.create_actor_builder()
    material = physx.PhysxMaterial(static_friction, dynamic_friction, 0.0)
    builder.add_box_collision(half_size=half, material=material, density=mass / float(np.prod(2 * np.asarray(half))))
    builder.add_box_visual(half_size=half, material=sapien.render.RenderMaterial(base_color=list(MEAT_COLOR)))
    builder.initial_pose = sapien.Pose(p=[0.0, 0.0, 2.0 + 0.2 * len(scene.actors)])
    return builder.build(name=name)


def meat_origin(meat: Actor) -> torch.Tensor:
    """World position (num_envs, 3) of RoboFactory's meat origin (7.5 mm above the slab's bottom face): the
    point its success rules test."""
    return offset_point(meat, MEAT_REFERENCE_OFFSET)


class RoboFactoryTableSceneBuilder(TableSceneBuilder):
    """ManiSkill's table scene with RoboFactory's larger table: top at z = 0, x in [-1.63, 1.39], y in [-3.02, 3.02].

    ManiSkill's own table ends at x = 0.47, short of where CameraAlignment and TakePhoto put the meat and
    their third arm.
    """

    def build(self) -> None:
        builder = self.scene.create_actor_builder()
        glb = str(Path(inspect.getfile(TableSceneBuilder)).parent / "assets" / "table.glb")
        hx, hy, hz = RF_TABLE_HALF_SIZE
        # The model's local axes are (world y, -world x); its collision box is given in those axes.
        builder.add_box_collision(pose=sapien.Pose(p=[0, 0, hz]), half_size=(hy, hx, hz))
        turn = sapien.Pose(q=euler2quat(0, 0, np.pi / 2))
        builder.add_visual_from_file(filename=glb, scale=[4.375, 4.375, 1.75], pose=turn)
        builder.initial_pose = sapien.Pose(p=[RF_TABLE_CENTER_X, 0, -2 * hz], q=euler2quat(0, 0, np.pi / 2))
        self.table = builder.build_kinematic(name="table-workspace")
        self.table_height = 2 * hz
        self.ground = build_ground(self.scene, floor_width=100, altitude=-self.table_height)
        self.scene_objects = [self.table, self.ground]


class WorldLayoutMixin:
    """For :class:`~envs.tasks.base.RFTableTaskEnv` subclasses: cameras at world poses, start joints per arm,
    optionally RoboFactory's larger table. List it before ``RFTableTaskEnv`` among the bases."""

    camera_world_poses: dict[str, sapien.Pose] = {}
    """Sensor camera name -> world pose (SAPIEN camera frame: x forward, z up); cameras not named keep the base
    class's placement."""
    arm_start_qpos: Sequence[np.ndarray] | None = None
    """Start joints (9) per arm, in agent order; None: RoboFactory's default for every arm."""
    large_table: bool = False
    """Build RoboFactory's table (:class:`RoboFactoryTableSceneBuilder`) instead of ManiSkill's."""

    @property
    def _default_sensor_configs(self):
        cams = super()._default_sensor_configs
        for cam in cams:
            if cam.uid in self.camera_world_poses:
                cam.pose = Pose.create(self.camera_world_poses[cam.uid])
        return cams

    def _load_scene(self, options: dict) -> None:
        if not self.large_table:
            return super()._load_scene(options)
        self.table_scene = RoboFactoryTableSceneBuilder(env=self, robot_init_qpos_noise=self.robot_init_qpos_noise)
        self.table_scene.build()
        self._load_objects(options)

    def _initialize_arms(self, env_idx: torch.Tensor) -> None:
        super()._initialize_arms(env_idx)  # default start joints + the seeded noise
        if self.arm_start_qpos is None:
            return
        for arm, qpos in zip(self.arms, self.arm_start_qpos):
            shift = torch.as_tensor(np.asarray(qpos, dtype=np.float32) - PANDA_INIT_QPOS, device=self.device)
            if not torch.any(shift != 0):
                continue
            q = arm.robot.get_qpos()[env_idx] + shift
            q[:, -2:] = 0.04
            arm.reset(q)


def look_at_pose(eye: Sequence[float], target: Sequence[float]) -> sapien.Pose:
    """World pose of a camera at ``eye`` looking at ``target`` (RoboFactory's ``look_at`` cameras)."""
    return sapien_utils.look_at(eye=list(eye), target=list(target)).sp


def world_pose(p: Sequence[float], q: Sequence[float]) -> sapien.Pose:
    """A world pose from a position and a (w, x, y, z) quaternion (RoboFactory's camera notation)."""
    return sapien.Pose(p=list(p), q=list(q))


__all__ = [
    "MEAT_HALF_SIZE",
    "RoboFactoryTableSceneBuilder",
    "WorldLayoutMixin",
    "build_meat",
    "meat_origin",
    "look_at_pose",
    "start_qpos",
    "world_pose",
]
