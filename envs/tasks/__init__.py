"""The RoboFactory-style ManiSkill3 tasks, one module per task; importing this registers them."""

from envs.tasks.lift_barrier import LiftBarrierEnv

__all__ = ["LiftBarrierEnv"]
