"""RoboFactory-style multi-robot ManiSkill3 tasks (ids ending in ``-rf``) and the multi-agent router.

``import envs`` registers the tasks with gymnasium (through ManiSkill's ``register_env``), e.g.
``gym.make("LiftBarrier-rf", obs_mode="rgb", camera_width=64, camera_height=48)``; ``envs.TASK_IDS``
lists them. The router lives in :mod:`envs.router`, the motion-planning solvers in :mod:`envs.solvers`.
"""

from envs.tasks import TASK_IDS

__all__ = ["TASK_IDS"]
