"""``LiftBarrier-rf``: two Pandas facing each other lift a long bar by its two ends.

Layout (RoboFactory's): ``panda-0`` at (0, -0.75) facing +y, ``panda-1`` at (0, 0.75) facing -y. The bar is
a box 0.04 x 0.50 x 0.04 m (long axis along world y, one end towards each arm) lying on the table,
its centre drawn uniformly from x in [-0.15, 0.05], y in [-0.03, 0.03], with a yaw in [-10, 10] deg.

Success rules, both in ``info``:

* ``success`` (RoboFactory's rule): bar centre height > robot base height + 0.15 m. It also counts a bar
  lifted by one arm, tipped on its end.
* ``success_strict``: ``success`` and both grippers grasp the bar (ManiSkill's ``is_grasping``) and the
  bar's long axis is within 10 deg of horizontal.

Episode cap: 400 control steps (20 Hz).
"""

from __future__ import annotations

import math

import torch

from mani_skill.utils.registration import register_env
from mani_skill.utils.structs.actor import Actor

from envs.tasks.base import ArmPlacement, RFTableTaskEnv

LIFT_HEIGHT = 0.15
"""RoboFactory's lift threshold above the robot base (m)."""
MAX_TILT_DEG = 10.0
"""Largest tilt of the bar's long axis from horizontal for ``success_strict`` (deg)."""

@register_env("LiftBarrier-rf", max_episode_steps=400)
class LiftBarrierEnv(RFTableTaskEnv):
    """Two arms lift a long bar together (RoboFactory's LiftBarrier with a box bar)."""

    SUPPORTED_ROBOTS = [("panda", "panda")]
    arm_placements = (ArmPlacement(0.0, -0.75, math.pi / 2), ArmPlacement(0.0, 0.75, -math.pi / 2))
    global_camera_eye = (0.55, 0.0, 0.75)
    global_camera_target = (-0.1, 0.0, 0.05)

    bar_half_size = (0.02, 0.25, 0.02)
    """Half extents of the bar (m); the long axis is the bar's local y."""
    bar_density = 300.0
    """kg/m^3: a 0.24 kg bar."""
    bar_color = (0.15, 0.35, 0.8, 1.0)
    bar_xy_range = ((-0.15, -0.03), (0.05, 0.03))
    """((x_low, y_low), (x_high, y_high)) of the bar centre."""
    bar_max_yaw = math.radians(10)
    """The bar's yaw about +z is uniform in [-bar_max_yaw, bar_max_yaw] (rad)."""
    grasp_inset = 0.05
    """Suggested grasp points lie this far (m) in from each end of the bar."""

    def _load_objects(self, options: dict) -> None:
        self.barrier: Actor = self.build_box("barrier", self.bar_half_size, self.bar_color, self.bar_density)

    def _initialize_objects(self, env_idx: torch.Tensor, options: dict) -> None:
        xy = self.sample_uniform(env_idx, *self.bar_xy_range)
        yaw = self.sample_uniform(env_idx, [-self.bar_max_yaw], [self.bar_max_yaw])
        self.place_on_table(self.barrier, xy, self.bar_half_size[2], yaw)

    def task_actors(self) -> dict[str, Actor]:
        return {"barrier": self.barrier}

    def grasp_points(self) -> torch.Tensor:
        """World points (num_envs, 2, 3) on the bar's axis ``grasp_inset`` in from its -y end (for ``panda-0``)
        and its +y end (for ``panda-1``)."""
        axis = self.barrier.pose.to_transformation_matrix()[..., :3, 1]
        d = self.bar_half_size[1] - self.grasp_inset
        c = self.barrier.pose.p
        return torch.stack([c - d * axis, c + d * axis], dim=1)

    def bar_tilt_deg(self) -> torch.Tensor:
        """Angle (deg) between the bar's long axis and the horizontal plane, per env."""
        axis = self.barrier.pose.to_transformation_matrix()[..., :3, 1]
        return torch.rad2deg(torch.asin(axis[..., 2].abs().clamp(max=1.0)))

    def evaluate(self) -> dict[str, torch.Tensor]:
        base_z = self.agent.agents[0].robot.pose.p[..., 2]
        lifted = self.barrier.pose.p[..., 2] > base_z + LIFT_HEIGHT
        grasped = [arm.is_grasping(self.barrier) for arm in self.arms]
        both_grasped = grasped[0] & grasped[1]
        level = self.bar_tilt_deg() < MAX_TILT_DEG
        return {
            "success": lifted,
            "success_strict": lifted & both_grasped & level,
            "is_grasped_0": grasped[0],
            "is_grasped_1": grasped[1],
            "is_level": level,
        }

__all__ = ["LiftBarrierEnv", "LIFT_HEIGHT", "MAX_TILT_DEG"]
