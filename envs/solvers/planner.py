"""Motion planning for N Panda arms in one ManiSkill scene: one mplib planner per arm, lock-step execution.

:class:`MultiArmPlanner` wraps a ``pd_joint_pos`` environment with one or more Panda arms. Each arm has its
own ``mplib.Planner`` placed at that arm's base pose. A move plans every named arm (screw motion, falling
back to RRT-Connect) from its *commanded* joint targets, then steps all arms together: moving arms follow
their time-parameterised paths, arms that wait hold their last joint targets (not their sagging measured
joints). Gripper commands are graded like RoboFactory's demonstrations: the command moves by 0.1 per env
step, so a full close (+1 -> -1) takes 20 steps. Every action sent to the env is recorded, so a solved
episode can be replayed open-loop from the same seed.

Gripper convention (ManiSkill Panda ``pd_joint_pos``, normalised): +1 = open (0.04 m per finger),
-1 = closed (target -0.01 m, so the fingers squeeze).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable, Literal, Sequence

import mplib
import numpy as np
import sapien
import torch
from mani_skill.examples.motionplanning.base_motionplanner.utils import compute_grasp_info_by_obb, get_actor_obb
from mani_skill.utils.structs.pose import to_sapien_pose
from transforms3d.euler import euler2quat

OPEN = 1.0
"""Gripper command that opens the Panda hand fully."""
CLOSED = -1.0
"""Gripper command that closes the Panda hand (and squeezes)."""
GRIPPER_STEP = 0.1
"""Change of the gripper command per env step (RoboFactory's grading: 20 steps from open to closed)."""
ARM_DOF = 7
FINGER_LENGTH = 0.025
"""Depth of a top-down grasp below the object's top face (Panda finger pad length)."""

PoseLike = sapien.Pose | np.ndarray | Sequence[float]


class PlanningFailed(RuntimeError):
    """No screw or RRT path reaches the requested pose for an arm."""


class GraspFailed(RuntimeError):
    """The gripper closed but the arm is not holding the object."""


def as_pose(pose: PoseLike | Any) -> sapien.Pose:
    """A sapien.Pose from a sapien pose, a ManiSkill batched pose of batch 1, or a 7-vector [x,y,z,qw,qx,qy,qz]."""
    if isinstance(pose, sapien.Pose):
        return pose
    if isinstance(pose, (np.ndarray, list, tuple)):
        arr = np.asarray(pose, dtype=np.float64).reshape(-1)
        if arr.shape != (7,):
            raise ValueError(f"a pose vector must have 7 entries [x,y,z,qw,qx,qy,qz], got shape {arr.shape}")
        return sapien.Pose(p=arr[:3], q=arr[3:])
    return to_sapien_pose(pose)


def pose_vector(pose: PoseLike) -> np.ndarray:
    """The 7-vector [x,y,z,qw,qx,qy,qz] of a pose."""
    pose = as_pose(pose)
    return np.concatenate([pose.p, pose.q])


def lifted(pose: PoseLike, dz: float) -> sapien.Pose:
    """``pose`` translated by ``dz`` along the world z axis (orientation kept)."""
    pose = as_pose(pose)
    return sapien.Pose(p=pose.p + np.array([0.0, 0.0, dz]), q=pose.q)


def first_env(x: Any) -> np.ndarray:
    """Sub-env 0's value of a batched simulator tensor, as a float64 numpy array."""
    return x[0].cpu().numpy().astype(np.float64)


def _numpy(x: Any) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    return np.asarray(x)


def arm_planner(agent: Any, joint_vel_limits: float = 0.9, joint_acc_limits: float = 0.9) -> mplib.Planner:
    """An mplib planner for one Panda of a ManiSkill agent: its URDF/SRDF, the TCP move group, joint limits
    (rad/s, rad/s^2) for time parameterisation. Poses are in the arm's base frame."""
    return mplib.Planner(
        urdf=agent.urdf_path,
        srdf=agent.urdf_path.replace(".urdf", ".srdf"),
        user_link_names=[link.get_name() for link in agent.robot.get_links()],
        user_joint_names=[joint.get_name() for joint in agent.robot.get_active_joints()],
        move_group="panda_hand_tcp",
        joint_vel_limits=np.ones(ARM_DOF) * joint_vel_limits,
        joint_acc_limits=np.ones(ARM_DOF) * joint_acc_limits,
    )


@dataclass
class Arm:
    """One Panda arm of the scene: its env key, ManiSkill agent, mplib planner and current commands."""

    key: str
    agent: Any
    planner: mplib.Planner
    target: np.ndarray
    gripper: float
    home: np.ndarray | None = None

    @property
    def robot(self) -> Any:
        """The arm's ManiSkill articulation."""
        return self.agent.robot

    def measured_qpos(self) -> np.ndarray:
        """Measured joint positions (9: 7 arm joints + 2 fingers) of env 0."""
        return _numpy(self.robot.get_qpos())[0].astype(np.float64)

    def plan_start(self) -> np.ndarray:
        """Start configuration for planning: commanded arm targets + measured fingers."""
        qpos = self.measured_qpos()
        qpos[:ARM_DOF] = self.target
        return qpos

    def tcp_pose(self) -> sapien.Pose:
        """Pose of the tool centre point in the world frame."""
        return as_pose(self.agent.tcp.pose)


class MultiArmPlanner:
    """Plan and execute moves for every Panda arm of a ``pd_joint_pos`` env, recording each action sent.

    Build it once per env; call :meth:`begin_episode` after every ``env.reset``.
    """

    def __init__(
        self,
        env: Any,
        joint_vel_limits: float = 0.9,
        joint_acc_limits: float = 0.9,
        refine_steps: int = 3,
    ) -> None:
        self.env = env
        self.base_env = env.unwrapped
        modes = self.base_env.control_mode
        modes = set(modes.values()) if isinstance(modes, dict) else {modes}
        if modes != {"pd_joint_pos"}:
            raise ValueError(f"motion planning needs control_mode 'pd_joint_pos', got {self.base_env.control_mode!r}")
        agent = self.base_env.agent
        if hasattr(agent, "agents_dict"):
            self.multi_agent = True
            items = list(agent.agents_dict.items())
        else:
            self.multi_agent = False
            items = [("panda-0", agent)]
        self.refine_steps = refine_steps
        self.arms: list[Arm] = []
        for key, ag in items:
            planner = arm_planner(ag, joint_vel_limits, joint_acc_limits)
            self.arms.append(Arm(key=key, agent=ag, planner=planner, target=np.zeros(ARM_DOF), gripper=OPEN))
        self.actions: list[dict[str, np.ndarray]] = []
        self.last_info: dict[str, Any] = {}

    # ------------------------------------------------------------------ episode bookkeeping
    @property
    def agent_keys(self) -> list[str]:
        """Env keys of the arms, in order (``panda-0``, ``panda-1``, ... for multi-agent envs)."""
        return [arm.key for arm in self.arms]

    def begin_episode(self) -> None:
        """Re-read base poses and joints after ``env.reset``; clear the recorded actions."""
        for arm in self.arms:
            base = as_pose(arm.robot.pose)
            arm.planner.set_base_pose(np.concatenate([base.p, base.q]))
            qpos = arm.measured_qpos()
            arm.target = qpos[:ARM_DOF].copy()
            arm.home = arm.target.copy()
            arm.gripper = OPEN if qpos[ARM_DOF:].sum() > 0.04 else CLOSED
        self.actions = []
        self.last_info = {}

    @property
    def elapsed_steps(self) -> int:
        """Env steps taken since :meth:`begin_episode`."""
        return len(self.actions)

    # ------------------------------------------------------------------ stepping
    def _step(self, targets: dict[int, np.ndarray] | None = None) -> dict[str, Any]:
        """Send one action: arms in ``targets`` go there, the others hold their commanded targets."""
        targets = targets or {}
        action: dict[str, np.ndarray] = {}
        for i, arm in enumerate(self.arms):
            q = targets.get(i, arm.target)
            action[arm.key] = np.concatenate([q, [arm.gripper]]).astype(np.float32)
        env_action = action if self.multi_agent else action[self.arms[0].key]
        _, _, _, _, info = self.env.step(env_action)
        self.actions.append(action)
        self.last_info = info
        return info

    def hold(self, steps: int) -> dict[str, Any]:
        """Step ``steps`` times with every arm holding its targets and gripper command."""
        info = self.last_info
        for _ in range(steps):
            info = self._step()
        return info

    def _arm_ids(self, arms: int | Iterable[int]) -> list[int]:
        ids = [arms] if isinstance(arms, (int, np.integer)) else list(arms)
        for i in ids:
            if not 0 <= i < len(self.arms):
                raise IndexError(f"arm {i} does not exist (the env has {len(self.arms)} arms)")
        return ids

    def set_gripper(self, arms: int | Iterable[int], command: float, extra_steps: int = 0) -> dict[str, Any]:
        """Move the gripper command of ``arms`` towards ``command`` by 0.1 per step (graded), others hold."""
        ids = self._arm_ids(arms)
        command = float(np.clip(command, CLOSED, OPEN))
        n = max(int(np.ceil(abs(self.arms[i].gripper - command) / GRIPPER_STEP - 1e-9)) for i in ids)
        info = self.last_info
        for _ in range(n):
            for i in ids:
                g = self.arms[i].gripper
                self.arms[i].gripper = float(np.clip(command, g - GRIPPER_STEP, g + GRIPPER_STEP))
            info = self._step()
        return self.hold(extra_steps) if extra_steps else info

    def close_gripper(self, arms: int | Iterable[int], extra_steps: int = 2) -> dict[str, Any]:
        """Close the grippers of ``arms`` (graded, 20 steps from open)."""
        return self.set_gripper(arms, CLOSED, extra_steps)

    def open_gripper(self, arms: int | Iterable[int], extra_steps: int = 2) -> dict[str, Any]:
        """Open the grippers of ``arms`` (graded, 20 steps from closed)."""
        return self.set_gripper(arms, OPEN, extra_steps)

    # ------------------------------------------------------------------ planning
    def plan(
        self, arm_id: int, pose: PoseLike, method: Literal["screw", "rrt", "auto"] = "auto"
    ) -> np.ndarray:
        """Joint path (K, 7) for arm ``arm_id`` from its commanded targets to the world-frame TCP ``pose``.

        ``auto`` tries a screw motion first and falls back to RRT-Connect. Raises :class:`PlanningFailed`.
        """
        arm = self.arms[self._arm_ids(arm_id)[0]]
        goal = pose_vector(pose)
        start = arm.plan_start()
        dt = self.base_env.control_timestep
        status = "not planned"
        if method in ("screw", "auto"):
            for _ in range(2):
                result = arm.planner.plan_screw(goal, start.copy(), time_step=dt)
                if result["status"] == "Success":
                    return np.asarray(result["position"], dtype=np.float64)
                status = result["status"]
        if method in ("rrt", "auto"):
            for _ in range(2):
                result = arm.planner.plan_qpos_to_pose(goal, start.copy(), time_step=dt, planning_time=1, wrt_world=True)
                if result["status"] == "Success":
                    return np.asarray(result["position"], dtype=np.float64)
                status = result["status"]
        raise PlanningFailed(f"arm {arm_id} ({arm.key}): no {method} path to pose {np.round(goal, 3).tolist()} ({status})")

    def can_reach(self, arm_id: int, pose: PoseLike) -> bool:
        """Whether a screw motion reaches ``pose`` for arm ``arm_id`` (no env step is taken)."""
        try:
            self.plan(arm_id, pose, method="screw")
        except PlanningFailed:
            return False
        return True

    def follow(self, paths: dict[int, np.ndarray], sync: bool = False) -> dict[str, Any]:
        """Step all arms together along ``paths`` (arm id -> (K, 7)).

        Shorter paths hold their last point, or with ``sync`` are stretched in time to the longest one
        so that arms carrying one object together start and stop together.
        """
        if not paths:
            return self.last_info
        n = max(len(p) for p in paths.values())
        if sync:
            paths = {i: resample_path(p, n) for i, p in paths.items()}
        info = self.last_info
        for t in range(n + self.refine_steps):
            info = self._step({i: p[min(t, len(p) - 1)] for i, p in paths.items()})
        for i, p in paths.items():
            self.arms[i].target = np.asarray(p[-1], dtype=np.float64).copy()
        return info

    def move(
        self,
        poses: dict[int, PoseLike],
        method: Literal["screw", "rrt", "auto"] = "auto",
        sync: bool = False,
    ) -> dict[str, Any]:
        """Plan every arm in ``poses`` (arm id -> TCP pose), then execute all paths in lock step."""
        paths = {i: self.plan(i, pose, method) for i, pose in poses.items()}
        return self.follow(paths, sync=sync)

    def move_joints(self, targets: dict[int, np.ndarray], steps: int | None = None) -> dict[str, Any]:
        """Interpolate arms linearly in joint space to ``targets`` (arm id -> 7 joints) over ``steps`` steps."""
        paths = {}
        for i, goal in targets.items():
            start = self.arms[i].target
            goal = np.asarray(goal, dtype=np.float64)
            k = steps or max(2, int(np.ceil(np.abs(goal - start).max() / 0.04)))
            paths[i] = start + (goal - start) * np.linspace(0.0, 1.0, k + 1)[1:, None]
        return self.follow(paths)

    # ------------------------------------------------------------------ grasp poses
    def top_down_grasp(self, arm_id: int, actor: Any, depth: float = FINGER_LENGTH) -> sapien.Pose:
        """A reachable top-down grasp of ``actor``'s oriented bounding box for arm ``arm_id``.

        The closing direction is the box's shorter horizontal axis, chosen nearest the arm's current
        closing axis; rotations of the hand about z by 0 and +-90 degrees are tried until a screw
        motion reaches the pose. Raises :class:`PlanningFailed` when none does.
        """
        arm = self.arms[self._arm_ids(arm_id)[0]]
        obb = get_actor_obb(actor)
        approaching = np.array([0.0, 0.0, -1.0])
        target_closing = arm.tcp_pose().to_transformation_matrix()[:3, 1]
        info = compute_grasp_info_by_obb(obb, approaching=approaching, target_closing=target_closing, depth=depth)
        grasp = arm.agent.build_grasp_pose(approaching, info["closing"], info["center"])
        for angle in (0.0, np.pi / 2, -np.pi / 2, np.pi):
            candidate = grasp * sapien.Pose(q=euler2quat(0, 0, angle))
            if self.can_reach(arm_id, candidate):
                return candidate
        raise PlanningFailed(f"arm {arm_id} ({arm.key}): no reachable top-down grasp of {actor.name}")

    def check_grasp(self, arm_id: int, actor: Any) -> None:
        """Raise :class:`GraspFailed` unless arm ``arm_id`` is grasping ``actor``."""
        arm = self.arms[self._arm_ids(arm_id)[0]]
        if not bool(_numpy(arm.agent.is_grasping(actor)).reshape(-1)[0]):
            raise GraspFailed(f"arm {arm_id} ({arm.key}) is not holding {actor.name} after closing")

    def pick(self, actors: dict[int, Any], lift: float = 0.1, approach: float = 0.06) -> dict[int, sapien.Pose]:
        """Arms (arm id -> actor) reach above, descend, grasp (graded close, checked) and lift, all together.

        Returns the grasp pose of each arm. Raises :class:`PlanningFailed` or :class:`GraspFailed`.
        """
        grasps = {i: self.top_down_grasp(i, actor) for i, actor in actors.items()}
        self.move({i: g * sapien.Pose([0, 0, -approach]) for i, g in grasps.items()})
        self.move(grasps)
        self.close_gripper(list(actors))
        for i, actor in actors.items():
            self.check_grasp(i, actor)
        self.move({i: lifted(g, lift) for i, g in grasps.items()})
        for i, actor in actors.items():
            self.check_grasp(i, actor)
        return grasps

    def place(
        self, arm_id: int, held: Any, goal_xyz: Sequence[float], hover: float = 0.05, release_lift: float = 0.08
    ) -> None:
        """Carry the ``held`` actor so its centre lands on ``goal_xyz``, release it and lift the hand clear."""
        arm = self.arms[self._arm_ids(arm_id)[0]]
        tcp = arm.tcp_pose()
        offset = tcp.p - _numpy(held.pose.p)[0]
        above = sapien.Pose(p=np.asarray(goal_xyz, dtype=np.float64) + offset + np.array([0, 0, hover]), q=tcp.q)
        self.move({arm_id: above})
        self.move({arm_id: lifted(above, -hover + 0.005)})
        self.open_gripper(arm_id)
        self.move({arm_id: lifted(arm.tcp_pose(), release_lift)})

    def retreat(self, arm_id: int, reach: float = 0.3, height: float = 0.3) -> dict[str, Any]:
        """Pull arm ``arm_id``'s hand back to ``reach`` in front of its base at ``height``, out of the shared space."""
        arm = self.arms[self._arm_ids(arm_id)[0]]
        base = as_pose(arm.robot.pose)
        forward = base.to_transformation_matrix()[:3, 0]
        target = sapien.Pose(p=base.p + forward * reach + np.array([0.0, 0.0, height]), q=arm.tcp_pose().q)
        return self.move({arm_id: target})

    def go_home(self, arms: int | Iterable[int]) -> dict[str, Any]:
        """Move ``arms`` back to the joint configuration they started the episode in (joint-space line)."""
        ids = self._arm_ids(arms)
        return self.move_joints({i: self.arms[i].home for i in ids if self.arms[i].home is not None})


def resample_path(path: np.ndarray, n: int) -> np.ndarray:
    """``path`` (K, D) linearly re-timed to ``n`` >= K points with the same start and end."""
    path = np.asarray(path, dtype=np.float64)
    if len(path) == n:
        return path
    if len(path) == 1:
        return np.repeat(path, n, axis=0)
    src = np.linspace(0.0, 1.0, len(path))
    dst = np.linspace(0.0, 1.0, n)
    return np.stack([np.interp(dst, src, path[:, j]) for j in range(path.shape[1])], axis=1)


def success_flag(info: dict[str, Any], key: str = "success") -> bool:
    """The boolean ``info[key]`` of env 0 (False when the key is missing)."""
    if key not in info:
        return False
    return bool(_numpy(info[key]).reshape(-1)[0])


__all__ = [
    "OPEN",
    "CLOSED",
    "GRIPPER_STEP",
    "Arm",
    "MultiArmPlanner",
    "PlanningFailed",
    "GraspFailed",
    "as_pose",
    "first_env",
    "pose_vector",
    "lifted",
    "resample_path",
    "success_flag",
]
