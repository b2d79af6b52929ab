"""``CameraAlignment-rf``: two Pandas lift a camera off its pedestal while a third holds the meat up to it.

Layout (RoboFactory's): ``panda-0`` at (0, -0.85) facing +y, ``panda-1`` at (0, 0.85) facing -y, ``panda-2`` at
(1.0, 0) facing -x, on RoboFactory's larger table. The camera prop (1 g, rotation locked; see
:mod:`envs.tasks.camera_prop`) sits on its pedestal (x in [-0.05, 0.05), y in [-0.1, 0.1)), lens towards
``panda-2``; the meat slab (0.1 kg, friction 0.3) lies at x in [0.3, 0.4), y in [-0.05, 0.05), turned 180 degrees.

Success rules, both in ``info``:

* ``success`` (RoboFactory's): the camera's origin and the meat's origin both more than 0.20 m above the robot
  base. Despite the task's name it checks no alignment at all.
* ``success_strict``: ``success`` and the camera aimed at the meat: the meat's centre within 15 degrees of the
  lens axis, 0.1 to 0.5 m in front of the lens (``info["aim_angle_deg"]``, ``info["aim_distance"]``).

Cameras at RoboFactory's world poses (``head_camera_agent1`` looks where ``head_camera_agent0`` does, as in
RoboFactory's configuration). Physics: ManiSkill's defaults (100 Hz simulation, 20 Hz control). Episode cap:
1500 control steps.
"""

from __future__ import annotations

import torch

from mani_skill.utils.registration import register_env

from envs.tasks.camera_prop import CameraPropTaskEnv
from envs.tasks.rf_scene import look_at_pose, world_pose


@register_env("CameraAlignment-rf", max_episode_steps=1500)
class CameraAlignmentEnv(CameraPropTaskEnv):
    """``panda-0`` and ``panda-1`` lift the camera, ``panda-2`` lifts the meat in front of its lens."""

    SUPPORTED_ROBOTS = [("panda", "panda", "panda")]
    camera_mass = 0.001
    meat_mass = 0.1
    meat_range = ((0.3, -0.05), (0.4, 0.05))
    camera_world_poses = {
        "head_camera_agent0": look_at_pose([-0.5, 0.0, 0.4], [0.0, 0.0, 0.1]),
        "head_camera_agent1": look_at_pose([-0.5, 0.0, 0.4], [0.0, 0.0, 0.1]),
        "head_camera_agent2": look_at_pose([0.165, -0.5, 0.4], [0.485, 0.0, 0.1]),
        "head_camera_global": world_pose([0.418364, 0.465167, 0.492697], [0.435656, 0.249818, 0.127239, -0.855339]),
    }

    def evaluate(self) -> dict[str, torch.Tensor]:
        info = super().evaluate()
        success = info["camera_lifted"] & info["meat_lifted"]
        info.update(success=success, success_strict=success & info["camera_aimed"])
        return info


__all__ = ["CameraAlignmentEnv"]
