"""``PickMeat-rf``: one Panda picks a piece of meat off the table and lifts it.

RoboFactory's PickMeat with a primitive steak. Layout: ``panda-0`` at (-0.615, 0) facing +x in RoboFactory's
rest pose (a plain single agent; :mod:`envs.router` calls it ``panda-0``). The steak is one dynamic box
0.0842 x 0.0376 x 0.0691 m (the size of RoboFactory's scaled meat mesh) standing on its long edge, its thin
axis along world y, yaw 0; mass 5 g with RoboFactory's inertia (0.1 kg m^2 about each axis, so it barely
rotates), friction 0.3, no restitution. Its position is RoboFactory's one-sided range: x in [-0.05, 0.15),
y in [-0.05, 0.15).

Success rules, both in ``info``:

* ``success`` (RoboFactory's rule): the meat's reference point (where RoboFactory's mesh origin sits,
  7.5 mm above the slab's bottom face) is more than 0.15 m above the robot base. It counts a meat flung or
  knocked upwards for an instant, which the any-time evaluation of RoboFactory's scripts accepts.
* ``success_strict``: ``success`` and the arm grasps the meat (ManiSkill's ``is_grasping``).

Physics: ManiSkill's defaults (100 Hz simulation, 20 Hz control), as RoboFactory. Episode cap: 500 control
steps (RoboFactory's).
"""

from __future__ import annotations

import torch

from mani_skill.utils.registration import register_env
from mani_skill.utils.structs.actor import Actor

from envs.tasks.base import ArmPlacement, BoxPart, RFTableTaskEnv

MEAT_HALF_SIZE = (0.0421, 0.0188, 0.0345)
"""Half extents (m) of the steak box: length (local x), thickness (local y), height (local z)."""
MEAT_MASS = 0.005
"""kg, RoboFactory's value."""
MEAT_INERTIA = (0.1, 0.1, 0.1)
"""Principal moments of inertia (kg m^2), RoboFactory's value."""
MEAT_COLOR = (0.62, 0.14, 0.12, 1.0)
MEAT_REFERENCE_OFFSET = (0.0, 0.0, -0.027)
"""RoboFactory's meat origin in the box frame: 7.5 mm above the bottom face (its success rule tests that point)."""
LIFT_HEIGHT = 0.15
"""RoboFactory's lift threshold above the robot base (m)."""


def meat_parts() -> list[BoxPart]:
    """The steak primitive: one box centred on the actor origin."""
    return [BoxPart(MEAT_HALF_SIZE, color=MEAT_COLOR)]


def offset_point(actor: Actor, local: tuple[float, float, float]) -> torch.Tensor:
    """World position (num_envs, 3) of the point ``local`` of ``actor``'s frame."""
    T = actor.pose.to_transformation_matrix()
    return T[..., :3, 3] + T[..., :3, :3] @ torch.as_tensor(local, dtype=T.dtype, device=T.device)


@register_env("PickMeat-rf", max_episode_steps=500)
class PickMeatEnv(RFTableTaskEnv):
    """One arm lifts the meat more than 0.15 m off the table."""

    SUPPORTED_ROBOTS = ["panda"]
    arm_placements = (ArmPlacement(-0.615, 0.0, 0.0),)
    global_camera_eye = (0.45, 0.0, 0.65)
    global_camera_target = (-0.2, 0.0, 0.05)
    render_camera_eye = (0.6, 0.7, 0.6)
    """RoboFactory's ``render_camera`` (looking at (0, 0, 0.35), fov 1)."""
    render_camera_target = (0.0, 0.0, 0.35)

    meat_range = ((-0.05, -0.05), (0.15, 0.15))
    """((x_low, y_low), (x_high, y_high)) of the meat centre, RoboFactory's one-sided range."""

    def _load_objects(self, options: dict) -> None:
        self.meat: Actor = self.build_box_body("meat", meat_parts(), MEAT_MASS, inertia=MEAT_INERTIA)

    def _initialize_objects(self, env_idx: torch.Tensor, options: dict) -> None:
        xy = self.sample_uniform(env_idx, *self.meat_range)
        self.place_on_table(self.meat, xy, MEAT_HALF_SIZE[2])

    def task_actors(self) -> dict[str, Actor]:
        return {"meat": self.meat}

    def evaluate(self) -> dict[str, torch.Tensor]:
        base_z = self.agent.robot.pose.p[..., 2]
        lifted = offset_point(self.meat, MEAT_REFERENCE_OFFSET)[..., 2] > base_z + LIFT_HEIGHT
        grasped = self.agent.is_grasping(self.meat)
        return {"success": lifted, "success_strict": lifted & grasped, "is_meat_grasped": grasped}


__all__ = ["PickMeatEnv", "LIFT_HEIGHT", "MEAT_HALF_SIZE", "MEAT_MASS", "MEAT_INERTIA", "meat_parts", "offset_point"]
