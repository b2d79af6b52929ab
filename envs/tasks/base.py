"""Shared scene for the RoboFactory-style tasks: table, Panda arm placement, cameras and seeded sampling.

Every task in ``envs.tasks`` subclasses :class:`RFTableTaskEnv`. The base class owns what RoboFactory's
tasks share:

* ManiSkill's table scene (table top at z = 0) with N Panda arms standing on it at fixed world poses
  (:attr:`RFTableTaskEnv.arm_placements`), reset every episode to RoboFactory's initial joint
  configuration ``[0, pi/8, 0, -5pi/8, 0, 3pi/4, pi/4, 0.04, 0.04]`` plus small Gaussian noise.
* Control: ``pd_joint_pos`` by default. Per arm the action is 8-d: 7 absolute arm joint targets (rad,
  not normalised, bounded by the joint limits) and one gripper command in [-1, 1]. ManiSkill's Panda
  gripper is a mimic-joint PD controller with ``normalize_action=True`` over the finger range
  [-0.01, 0.04] m, so -1 commands each finger to -0.01 m (closed, squeezing thin objects) and +1 to
  0.04 m (fully open); 0 is 0.015 m. This is RoboFactory's [-1, 1] gripper convention, and the action
  stored in the datasets is exactly this env action.
* Agent keys: with two or more arms ManiSkill builds a ``MultiAgent`` keyed ``panda-0``, ``panda-1``...
  (observation ``obs["agent"]["panda-i"]``, action dict ``{"panda-i": a}``). A one-arm task is a plain
  single agent (``obs["agent"]["qpos"]``, action of shape (8,)); :mod:`envs.router` names it ``panda-0``.
* Cameras: one fixed world-frame camera per arm, ``head_camera_agent<i>``, looking at that arm's
  workspace from across the table (RoboFactory's placement, expressed in the arm's frame), plus
  ``head_camera_global`` over the whole scene. All have fov pi/2 and 320x240 pixels by default; pass
  ``camera_width=`` / ``camera_height=`` to ``gym.make`` to change the size of every sensor camera
  (ManiSkill's generic ``sensor_configs=dict(width=..., height=...)`` works as well).
* Randomisation: all task randomness is drawn from ManiSkill's per-environment episode generator
  ``self._batched_episode_rng`` (one NumPy generator per parallel env, seeded by ``reset(seed=...)``), so a
  seed gives the same layout on the CPU backend and for the same env index on the GPU backend.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import sapien
import torch

from mani_skill.envs.sapien_env import BaseEnv
from mani_skill.sensors.camera import CameraConfig
from mani_skill.utils import sapien_utils
from mani_skill.utils.building import actors
from mani_skill.utils.scene_builder.table import TableSceneBuilder
from mani_skill.utils.structs.actor import Actor
from mani_skill.utils.structs.pose import Pose
from mani_skill.utils.structs.types import GPUMemoryConfig, SimConfig

from envs.tasks.brdf_lut import install_brdf_lut
from rf_dp_agents.architecture import GLOBAL_CAMERA, own_camera  # the scene-wide camera, and each arm's own

PANDA_INIT_QPOS = np.array(
    [0.0, np.pi / 8, 0.0, -np.pi * 5 / 8, 0.0, np.pi * 3 / 4, np.pi / 4, 0.04, 0.04], dtype=np.float32
)
"""RoboFactory's initial Panda joint configuration (7 arm joints + 2 finger joints, open)."""

CAMERA_FOV = math.pi / 2
"""Field of view of every task camera (RoboFactory's value)."""

DEFAULT_CAMERA_WIDTH = 320
DEFAULT_CAMERA_HEIGHT = 240

AGENT_CAMERA_EYE_LOCAL = (0.865, 0.5, 0.4)
"""Agent camera position in the arm's frame (x forward, y left, z up), from RoboFactory's LiftBarrier."""
AGENT_CAMERA_TARGET_LOCAL = (0.515, 0.0, 0.1)
"""Point the agent camera looks at, in the arm's frame."""

GOAL_DISC_QUAT = (math.sqrt(0.5), 0.0, math.sqrt(0.5), 0.0)
"""Rotation laying ManiSkill's red/white target (a cylinder along x) flat on the table."""

CUBE_HALF_SIZE = 0.02
"""Half edge of the cubes of the stacking and delivery tasks (m), as in RoboFactory."""
STACK_TOLERANCE = 0.005
"""Slack (m) of the cube-on-cube test, RoboFactory's value."""

STATIC_LIN_THRESH = 0.03
"""Largest speed (m/s) of a resting object: PhysX keeps a stack of cubes jittering at up to ~0.02 m/s."""
STATIC_ANG_THRESH = 0.5
"""Largest angular speed (rad/s) of a resting object."""


def is_static(actor: Actor) -> torch.Tensor:
    """True where ``actor`` is at rest (within :data:`STATIC_LIN_THRESH` and :data:`STATIC_ANG_THRESH`)."""
    return actor.is_static(lin_thresh=STATIC_LIN_THRESH, ang_thresh=STATIC_ANG_THRESH)


def is_stacked_on(top: Actor, bottom: Actor, half_size: float = CUBE_HALF_SIZE) -> torch.Tensor:
    """RoboFactory's cube-on-cube test: centres within one half diagonal (+5 mm) in xy, one edge (+-5 mm) apart in z."""
    offset = top.pose.p - bottom.pose.p
    xy_ok = torch.linalg.norm(offset[..., :2], dim=-1) <= math.sqrt(2) * half_size + STACK_TOLERANCE
    z_ok = (offset[..., 2] - 2 * half_size).abs() <= STACK_TOLERANCE
    return xy_ok & z_ok


def is_released(arms: Sequence[Any], actors_: Sequence[Actor]) -> torch.Tensor:
    """True where no arm grasps any of ``actors_``."""
    held = None
    for arm in arms:
        for actor in actors_:
            g = arm.is_grasping(actor)
            held = g if held is None else held | g
    return ~held


@dataclass(frozen=True)
class BoxPart:
    """One box of a compound primitive object (:meth:`RFTableTaskEnv.build_box_body`), in the object's frame."""

    half_size: tuple[float, float, float]
    offset: tuple[float, float, float] = (0.0, 0.0, 0.0)
    color: tuple[float, float, float, float] = (0.5, 0.5, 0.5, 1.0)


@dataclass(frozen=True)
class ArmPlacement:
    """World pose of one Panda base on the table: position (x, y) and heading yaw (rad) about +z."""

    x: float
    y: float
    yaw: float

    @property
    def quat(self) -> np.ndarray:
        """Base orientation as a SAPIEN (w, x, y, z) quaternion."""
        return yaw_quat(self.yaw)

    def to_world(self, local: Sequence[float]) -> np.ndarray:
        """Map a point (forward, left, up) in the arm's frame to world coordinates."""
        c, s = math.cos(self.yaw), math.sin(self.yaw)
        fx, ly, uz = local
        return np.array([self.x + c * fx - s * ly, self.y + s * fx + c * ly, uz], dtype=np.float64)

    def sapien_pose(self) -> sapien.Pose:
        """The base pose as a ``sapien.Pose``."""
        return sapien.Pose(p=[self.x, self.y, 0.0], q=self.quat.tolist())


def yaw_quat(yaw: float | np.ndarray) -> np.ndarray:
    """(w, x, y, z) quaternion(s) of a rotation by ``yaw`` radians about +z; shape (..., 4)."""
    yaw = np.asarray(yaw, dtype=np.float64)
    return np.stack([np.cos(yaw / 2), np.zeros_like(yaw), np.zeros_like(yaw), np.sin(yaw / 2)], axis=-1)


class RFTableTaskEnv(BaseEnv):
    """Base class of the ``-rf`` tasks: table scene, N Pandas at :attr:`arm_placements`, cameras, sampling.

    Subclasses set :attr:`arm_placements` (and optionally the camera placements
    :attr:`agent_camera_eye_local`, :attr:`agent_camera_target_local`, :attr:`global_camera_eye`,
    :attr:`global_camera_target`), build their objects in :meth:`_load_objects`, place them in
    :meth:`_initialize_objects` and implement ``evaluate``.
    """

    SUPPORTED_REWARD_MODES = ("sparse", "none")

    arm_placements: tuple[ArmPlacement, ...] = ()
    """World placement of each arm, in agent order (``panda-0`` first)."""
    agent_camera_eye_local: tuple[float, float, float] = AGENT_CAMERA_EYE_LOCAL
    """Where ``head_camera_agent<i>`` sits, in arm i's frame (x forward, y left, z up)."""
    agent_camera_target_local: tuple[float, float, float] = AGENT_CAMERA_TARGET_LOCAL
    """The point ``head_camera_agent<i>`` looks at, in arm i's frame."""
    global_camera_eye: tuple[float, float, float] = (0.55, 0.0, 0.75)
    global_camera_target: tuple[float, float, float] = (-0.15, 0.0, 0.05)
    render_camera_eye: tuple[float, float, float] = (0.85, 0.3, 0.8)
    """Position of the 512x512 ``render_camera`` (``render_mode="rgb_array"``, videos, README pictures)."""
    render_camera_target: tuple[float, float, float] = (-0.15, 0.0, 0.05)
    render_camera_fov: float = 1.0
    init_qpos: np.ndarray = PANDA_INIT_QPOS
    """Start configuration (7 arm joints + 2 fingers) of every arm; see :meth:`arm_init_qpos`."""
    brdf_lut: bool = True
    """Give the cameras :mod:`envs.tasks.brdf_lut`'s table (False: SAPIEN generates its own, 4 s on lavapipe)."""

    def __init__(
        self,
        *args: Any,
        robot_uids: str | tuple[str, ...] | None = None,
        robot_init_qpos_noise: float = 0.02,
        camera_width: int = DEFAULT_CAMERA_WIDTH,
        camera_height: int = DEFAULT_CAMERA_HEIGHT,
        **kwargs: Any,
    ) -> None:
        n = len(self.arm_placements)
        if n == 0:
            raise TypeError(f"{type(self).__name__} defines no arm_placements")
        if robot_uids is None:
            robot_uids = "panda" if n == 1 else ("panda",) * n
        n_given = 1 if isinstance(robot_uids, str) else len(robot_uids)
        if n_given != n:
            raise ValueError(f"{type(self).__name__} places {n} arm(s) but robot_uids={robot_uids!r} names {n_given}")
        if int(camera_width) <= 0 or int(camera_height) <= 0:
            raise ValueError(f"camera_width/camera_height must be positive, got {camera_width}x{camera_height}")
        self.robot_init_qpos_noise = float(robot_init_qpos_noise)
        self.camera_width = int(camera_width)
        self.camera_height = int(camera_height)
        kwargs.setdefault("control_mode", "pd_joint_pos")
        super().__init__(*args, robot_uids=robot_uids, **kwargs)

    # ------------------------------------------------------------------ configuration
    @property
    def num_arms(self) -> int:
        """Number of Panda arms in the task."""
        return len(self.arm_placements)

    @property
    def arms(self) -> list:
        """The per-arm ManiSkill agents, in agent order (a one-element list for one-arm tasks)."""
        return list(self.agent.agents) if self.num_arms > 1 else [self.agent]

    @property
    def _default_sim_config(self) -> SimConfig:
        return SimConfig(
            gpu_memory_config=GPUMemoryConfig(
                found_lost_pairs_capacity=2**25, max_rigid_patch_count=2**19, max_rigid_contact_count=2**21
            )
        )

    def agent_camera_pose(self, i: int) -> Pose:
        """World pose of ``head_camera_agent<i>``: across the table from arm i, looking at its workspace."""
        placement = self.arm_placements[i]
        return sapien_utils.look_at(
            eye=placement.to_world(self.agent_camera_eye_local).tolist(),
            target=placement.to_world(self.agent_camera_target_local).tolist(),
        )

    @property
    def _default_sensor_configs(self) -> list[CameraConfig]:
        w, h = self.camera_width, self.camera_height
        cams = [
            CameraConfig(own_camera(i), self.agent_camera_pose(i), w, h, CAMERA_FOV, 0.01, 10)
            for i in range(self.num_arms)
        ]
        global_pose = sapien_utils.look_at(eye=list(self.global_camera_eye), target=list(self.global_camera_target))
        cams.append(CameraConfig(GLOBAL_CAMERA, global_pose, w, h, CAMERA_FOV, 0.01, 10))
        return cams

    @property
    def _default_human_render_camera_configs(self) -> CameraConfig:
        pose = sapien_utils.look_at(eye=list(self.render_camera_eye), target=list(self.render_camera_target))
        return CameraConfig("render_camera", pose, 512, 512, self.render_camera_fov, 0.01, 100)

    # ------------------------------------------------------------------ building
    def _load_agent(self, options: dict) -> None:
        super()._load_agent(options, [p.sapien_pose() for p in self.arm_placements])

    def _load_scene(self, options: dict) -> None:
        self.table_scene = TableSceneBuilder(env=self, robot_init_qpos_noise=self.robot_init_qpos_noise)
        self.table_scene.build()
        self._load_objects(options)

    def _load_objects(self, options: dict) -> None:
        """Build the task's actors (called once per reconfiguration)."""
        raise NotImplementedError

    def build_box(
        self, name: str, half_size: Sequence[float], color: Sequence[float], density: float = 1000.0
    ) -> Actor:
        """A dynamic box actor (primitive shape), parked out of the way until the episode places it."""
        builder = self.scene.create_actor_builder()
        builder.add_box_collision(half_size=list(half_size), density=density)
        builder.add_box_visual(half_size=list(half_size), material=sapien.render.RenderMaterial(base_color=list(color)))
        builder.initial_pose = sapien.Pose(p=[0.0, 0.0, 2.0 + 0.2 * len(self.scene.actors)])
        return builder.build(name=name)

    def build_box_body(
        self,
        name: str,
        parts: Sequence[BoxPart],
        mass: float,
        inertia: Sequence[float] | None = None,
        com: Sequence[float] = (0.0, 0.0, 0.0),
        friction: float = 0.3,
        restitution: float = 0.0,
    ) -> Actor:
        """One dynamic actor made of boxes (collision and visual per part) with the given ``mass`` (kg) and
        static/dynamic ``friction``, parked out of the way until the episode places it.

        With ``inertia`` (principal moments, kg m^2) the centre of mass is ``com`` in the actor frame and the
        inertia is taken as given (RoboFactory's assets set both); without, both follow from a uniform density.
        """
        if not parts:
            raise ValueError(f"{name}: a box body needs at least one part")
        material = sapien.physx.PhysxMaterial(float(friction), float(friction), float(restitution))
        volume = sum(8.0 * float(np.prod(part.half_size)) for part in parts)
        builder = self.scene.create_actor_builder()
        for part in parts:
            pose = sapien.Pose(p=list(part.offset))
            builder.add_box_collision(pose, list(part.half_size), material=material, density=mass / volume)
            visual = sapien.render.RenderMaterial(base_color=list(part.color))
            builder.add_box_visual(pose, list(part.half_size), material=visual)
        if inertia is not None:
            builder.set_mass_and_inertia(float(mass), sapien.Pose(p=list(com)), list(inertia))
        builder.initial_pose = sapien.Pose(p=[0.0, 0.0, 2.0 + 0.2 * len(self.scene.actors)])
        return builder.build(name=name)

    # ------------------------------------------------------------------ episodes
    def _initialize_episode(self, env_idx: torch.Tensor, options: dict) -> None:
        with torch.device(self.device):
            self._initialize_arms(env_idx)
            self._initialize_objects(env_idx, options)

    def _initialize_arms(self, env_idx: torch.Tensor) -> None:
        b = len(env_idx)
        for i, (placement, arm) in enumerate(zip(self.arm_placements, self.arms)):
            init = np.asarray(self.arm_init_qpos(i), dtype=np.float32)
            noise = self.sample_normal(env_idx, 0.0, self.robot_init_qpos_noise, len(init))
            qpos = torch.as_tensor(init, device=self.device) + noise
            qpos[:, -2:] = 0.04
            arm.reset(qpos)
            p = torch.tensor([[placement.x, placement.y, 0.0]], device=self.device).repeat(b, 1)
            q = torch.as_tensor(placement.quat, dtype=torch.float32, device=self.device)[None].repeat(b, 1)
            arm.robot.set_pose(Pose.create_from_pq(p=p, q=q))

    def arm_init_qpos(self, i: int) -> np.ndarray:
        """Start configuration (9,) of arm ``i`` before noise: :attr:`init_qpos` (override for per-arm poses)."""
        return self.init_qpos

    def _initialize_objects(self, env_idx: torch.Tensor, options: dict) -> None:
        """Place the task's actors for the envs in ``env_idx`` using :meth:`sample_uniform`."""
        raise NotImplementedError

    def sample_uniform(self, env_idx: torch.Tensor, low: Sequence[float], high: Sequence[float]) -> torch.Tensor:
        """Per-env uniform samples in [low, high) from the seeded episode generators; shape (len(env_idx), d)."""
        low_a, high_a = np.asarray(low, dtype=np.float64), np.asarray(high, dtype=np.float64)
        x = self._batched_episode_rng[env_idx].uniform(low=low_a, high=high_a, size=low_a.shape)
        return torch.as_tensor(np.asarray(x, dtype=np.float32).reshape(len(env_idx), -1), device=self.device)

    def sample_normal(self, env_idx: torch.Tensor, mean: float, std: float, d: int) -> torch.Tensor:
        """Per-env Gaussian samples from the seeded episode generators; shape (len(env_idx), d)."""
        x = self._batched_episode_rng[env_idx].normal(mean, std, size=(d,))
        return torch.as_tensor(np.asarray(x, dtype=np.float32).reshape(len(env_idx), d), device=self.device)

    def build_goal(self, name: str, radius: float) -> Actor:
        """A flat red/white target disc on the table (visual only, kinematic), placed by :meth:`place_goal`."""
        return actors.build_red_white_target(
            self.scene, radius=radius, thickness=1e-5, name=name, add_collision=False, body_type="kinematic",
            initial_pose=sapien.Pose(p=[0.0, 0.0, -1.0]),
        )

    def place_goal(self, goal: Actor, xy: torch.Tensor) -> None:
        """Lay a target disc from :meth:`build_goal` flat on the table at ``xy`` (per env)."""
        b = xy.shape[0]
        p = torch.cat([xy, torch.full((b, 1), 1e-3, device=xy.device)], dim=1)
        q = torch.as_tensor(GOAL_DISC_QUAT, dtype=torch.float32, device=xy.device)[None].repeat(b, 1)
        goal.set_pose(Pose.create_from_pq(p=p, q=q))

    def place_on_table(self, actor: Actor, xy: torch.Tensor, z: float, yaw: torch.Tensor | None = None) -> None:
        """Set ``actor`` at (x, y, z) per env with an optional yaw (rad) about +z."""
        b = xy.shape[0]
        p = torch.cat([xy, torch.full((b, 1), float(z), device=xy.device)], dim=1)
        if yaw is None:
            yaw = torch.zeros(b, device=xy.device)
        half = yaw.reshape(b) / 2
        zeros = torch.zeros_like(half)
        q = torch.stack([torch.cos(half), zeros, zeros, torch.sin(half)], dim=1)
        actor.set_pose(Pose.create_from_pq(p=p, q=q))

    def _setup_sensors(self, options: dict) -> None:
        super()._setup_sensors(options)
        if self.brdf_lut and not self.gpu_sim_enabled:  # CPU backend: cameras render one by one (envs.tasks.brdf_lut)
            install_brdf_lut([*self._sensors.values(), *self._human_render_cameras.values()])

    # ------------------------------------------------------------------ observations
    def task_actors(self) -> dict[str, Actor]:
        """Actors whose poses appear in state observations, by name."""
        return {}

    @property
    def paused_cameras(self) -> frozenset[str]:
        """Sensor cameras left out of observations (:meth:`pause_cameras`)."""
        return getattr(self, "_paused_cameras", frozenset())

    def pause_cameras(self, names: Sequence[str] = ()) -> frozenset[str]:
        """Stop rendering the sensor cameras ``names`` (an empty list resumes them all) and return the set now
        paused. Their entries leave ``obs["sensor_data"]`` from the next observation on: a camera nobody reads
        (the global view of an evaluation episode that records no video) then costs no render.

        On the CPU backend each camera renders on its own, so a paused one is skipped; with GPU simulation the
        cameras render as one batch and this is a no-op (nothing paused is returned).
        """
        names = frozenset(str(n) for n in names)
        unknown = sorted(names - set(self._sensors))
        if unknown:
            raise ValueError(f"{self.spec.id if self.spec else type(self).__name__}: no sensor camera {unknown}; "
                             f"its cameras are {sorted(self._sensors)}")
        self._paused_cameras = frozenset() if self.gpu_sim_enabled else names
        return self._paused_cameras

    def _get_obs_sensor_data(self, apply_texture_transforms: bool = True) -> dict:
        paused = self.paused_cameras
        if not paused:
            return super()._get_obs_sensor_data(apply_texture_transforms)
        every = self._sensors
        active = {uid: sensor for uid, sensor in every.items() if uid not in paused}
        self._sensors = self.scene.sensors = active  # what capture and read-out iterate over
        try:
            return super()._get_obs_sensor_data(apply_texture_transforms)
        finally:
            self._sensors = self.scene.sensors = every

    def _get_obs_extra(self, info: dict) -> dict:
        obs: dict[str, torch.Tensor] = {}
        for i, arm in enumerate(self.arms):
            obs[f"tcp_pose_{i}"] = arm.tcp.pose.raw_pose
        if "state" in self.obs_mode:
            for name, actor in self.task_actors().items():
                obs[f"{name}_pose"] = actor.pose.raw_pose
        return obs
