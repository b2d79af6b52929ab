"""The RoboFactory-style ManiSkill3 tasks, one module per task; importing this registers them."""

from envs.tasks.camera_alignment import CameraAlignmentEnv
from envs.tasks.lift_barrier import LiftBarrierEnv
from envs.tasks.long_pipeline_delivery import LongPipelineDeliveryEnv
from envs.tasks.pass_shoe import PassShoeEnv
from envs.tasks.pick_meat import PickMeatEnv
from envs.tasks.place_food import PlaceFoodEnv
from envs.tasks.stack_cube import StackCubeEnv
from envs.tasks.strike_cube import StrikeCubeEnv
from envs.tasks.take_photo import TakePhotoEnv
from envs.tasks.three_robots_stack_cube import ThreeRobotsStackCubeEnv
from envs.tasks.two_robots_stack_cube import TwoRobotsStackCubeEnv

TASK_IDS = (
    "PickMeat-rf",
    "StackCube-rf",
    "StrikeCube-rf",
    "LiftBarrier-rf",
    "PassShoe-rf",
    "PlaceFood-rf",
    "TwoRobotsStackCube-rf",
    "ThreeRobotsStackCube-rf",
    "CameraAlignment-rf",
    "LongPipelineDelivery-rf",
    "TakePhoto-rf",
)
"""Gymnasium ids of the tasks registered by ``import envs``."""

__all__ = [
    "TASK_IDS",
    "CameraAlignmentEnv",
    "LiftBarrierEnv",
    "LongPipelineDeliveryEnv",
    "PassShoeEnv",
    "PickMeatEnv",
    "PlaceFoodEnv",
    "StackCubeEnv",
    "StrikeCubeEnv",
    "TakePhotoEnv",
    "ThreeRobotsStackCubeEnv",
    "TwoRobotsStackCubeEnv",
]
