"""``TakePhoto-rf``: CameraAlignment's three arms lift the camera and hold the meat up to it; a fourth presses
the shutter.

Layout (RoboFactory's): CameraAlignment's ``panda-0`` (0, -0.85), ``panda-1`` (0, 0.85) and ``panda-2`` (1.0, 0,
facing -x), plus ``panda-3`` at (-0.6, 0) facing +x, behind the camera, starting with its elbow less folded
(joint 4 = -3pi/8). The camera prop weighs 10 g (rotation locked, see :mod:`envs.tasks.camera_prop`); the meat
(5 g, friction 0.3) lies at x in [0.45, 0.60), y in [-0.40, -0.20), turned 180 degrees.

Success rules, both in ``info``:

* ``success`` (RoboFactory's): ``panda-3``'s TCP within 3.5 cm in x and in y of the shutter's place (camera origin
  + (0.035, -0.09) in world axes), camera origin and meat origin both more than 0.20 m above the robot base,
  and ``panda-2``'s TCP less than 0.08 m (signed, world y) past the meat. It does not check that the shutter
  was pressed, nor where the camera points.
* ``success_strict``: ``success``, the shutter pressed (``info["shutter_pressed"]``: ``panda-3``'s fingertips
  on the shutter's top face, within :data:`PRESS_XY_TOL` of its centre and no more than :data:`PRESS_Z_TOL`
  above it, pushing on the camera with at least :data:`PRESS_MIN_FORCE`) and the camera aimed at the meat
  (as CameraAlignment-rf's strict rule).

Cameras at RoboFactory's world poses. Physics: ManiSkill's defaults (100 Hz simulation, 20 Hz control).
Episode cap: 1500 control steps.
"""

from __future__ import annotations

import math

import torch

from mani_skill.utils.registration import register_env

from envs.tasks.base import ArmPlacement
from envs.tasks.camera_prop import SHUTTER_HALF_SIZE, SHUTTER_XY, CameraPropTaskEnv, shutter_top
from envs.tasks.rf_scene import start_qpos, world_pose

BUTTON_TOL = 0.035
"""RoboFactory's rule: ``panda-3``'s TCP within this (m) of the shutter's place in x and in y."""
HELD_Y_TOL = 0.08
"""RoboFactory's rule: ``panda-2``'s TCP y minus the meat's y below this (m)."""
FINGERTIP_BELOW_TCP = 0.009
"""The closed Panda fingertips reach this far (m) below the TCP."""
PRESS_XY_TOL = SHUTTER_HALF_SIZE[0] + 0.005
PRESS_Z_TOL = 0.004
PRESS_MIN_FORCE = 0.5
"""N, summed over ``panda-3``'s two fingers, on the camera."""


@register_env("TakePhoto-rf", max_episode_steps=1500)
class TakePhotoEnv(CameraPropTaskEnv):
    """CameraAlignment's lift and presentation, then ``panda-3`` presses the shutter."""

    SUPPORTED_ROBOTS = [("panda", "panda", "panda", "panda")]
    arm_placements = CameraPropTaskEnv.arm_placements + (ArmPlacement(-0.6, 0.0, 0.0),)
    arm_start_qpos = (
        start_qpos(-5 * math.pi / 8),
        start_qpos(-5 * math.pi / 8),
        start_qpos(-5 * math.pi / 8),
        start_qpos(-3 * math.pi / 8),
    )
    camera_mass = 0.01
    meat_mass = 0.005
    meat_range = ((0.45, -0.4), (0.6, -0.2))
    camera_world_poses = {
        "head_camera_agent0": world_pose([-0.517379, -0.825534, 0.544694], [0.973373, -0.0263478, 0.148767, 0.172391]),
        "head_camera_agent1": world_pose([0.562348, 0.785704, 0.555279], [0.161394, 0.131976, 0.0217843, -0.977783]),
        "head_camera_agent2": world_pose([0.827632, -0.75711, 0.520754], [0.692724, -0.0746079, 0.0724179, 0.713668]),
        "head_camera_agent3": world_pose([-0.70417, 0.458536, 0.606336], [0.871062, 0.053639, 0.0976719, -0.478366]),
        "head_camera_global": world_pose([0.672536, -0.794409, 0.694811], [0.42276, -0.258701, 0.127348, 0.859145]),
    }

    def fingertip(self) -> torch.Tensor:
        """World position (num_envs, 3) of ``panda-3``'s closed fingertips."""
        T = self.agent.agents[3].tcp.pose.to_transformation_matrix()
        return T[..., :3, 3] + FINGERTIP_BELOW_TCP * T[..., :3, 2]

    def shutter_pressed(self) -> torch.Tensor:
        """True where ``panda-3``'s fingertips push on the shutter's top face."""
        arm = self.agent.agents[3]
        offset = self.fingertip() - shutter_top(self.camera)
        on_top = (offset[..., :2].abs() < PRESS_XY_TOL).all(dim=-1) & (offset[..., 2] < PRESS_Z_TOL)
        force = sum(
            torch.linalg.norm(self.scene.get_pairwise_contact_forces(link, self.camera), dim=-1)
            for link in (arm.finger1_link, arm.finger2_link)
        )
        return on_top & (force >= PRESS_MIN_FORCE)

    def evaluate(self) -> dict[str, torch.Tensor]:
        info = super().evaluate()
        button_xy = self.camera.pose.p[..., :2] + torch.tensor(SHUTTER_XY, device=self.device)
        near_button = ((self.agent.agents[3].tcp.pose.p[..., :2] - button_xy).abs() < BUTTON_TOL).all(dim=-1)
        meat_held = (self.agent.agents[2].tcp.pose.p[..., 1] - self.meat.pose.p[..., 1]) < HELD_Y_TOL
        success = near_button & info["camera_lifted"] & info["meat_lifted"] & meat_held
        pressed = self.shutter_pressed()
        info.update(
            near_button=near_button,
            shutter_pressed=pressed,
            success=success,
            success_strict=success & pressed & info["camera_aimed"],
        )
        return info


__all__ = ["TakePhotoEnv", "BUTTON_TOL", "HELD_Y_TOL", "PRESS_MIN_FORCE"]
