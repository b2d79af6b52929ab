"""RoboFactory-style multi-robot ManiSkill3 tasks (ids ending in ``-rf``) and the multi-agent router.

``import envs`` registers the tasks with gymnasium (through ManiSkill's ``register_env``):
``gym.make("LiftBarrier-rf", obs_mode="rgb", camera_width=64, camera_height=48)``.
"""

from envs import tasks  # noqa: F401  (registers the -rf tasks)
