"""The RoboFactory-style ManiSkill3 tasks, one module per task; importing this registers them."""

from envs.tasks.lift_barrier import LiftBarrierEnv
from envs.tasks.long_pipeline_delivery import LongPipelineDeliveryEnv
from envs.tasks.stack_cube import StackCubeEnv
from envs.tasks.three_robots_stack_cube import ThreeRobotsStackCubeEnv
from envs.tasks.two_robots_stack_cube import TwoRobotsStackCubeEnv

TASK_IDS = (
    "StackCube-rf",
    "LiftBarrier-rf",
    "TwoRobotsStackCube-rf",
    "ThreeRobotsStackCube-rf",
    "LongPipelineDelivery-rf",
)
"""Gymnasium ids of the tasks registered by ``import envs``."""

__all__ = [
    "TASK_IDS",
    "LiftBarrierEnv",
    "LongPipelineDeliveryEnv",
    "StackCubeEnv",
    "ThreeRobotsStackCubeEnv",
    "TwoRobotsStackCubeEnv",
]
