"""Env steps per second of an -rf task on this machine's simulator, every camera rendered against the global
camera paused (what rollout episodes that record no video run).

This module meets the simulator: gymnasium, ManiSkill and the ``envs`` tasks are imported when
:func:`measure_env_steps` runs, not when the module is imported.
"""

from __future__ import annotations

import datetime as dt
import platform
import time
from typing import Any

import numpy as np


def steps_per_second(env: Any, paused: list[str], steps: int) -> float:
    """Env steps per second with the sensor cameras ``paused`` left out, every arm holding its initial pose."""
    from envs.tasks.base import PANDA_INIT_QPOS

    env.unwrapped.pause_cameras(paused)
    env.reset(seed=0)
    n = env.unwrapped.num_arms
    hold = np.concatenate([PANDA_INIT_QPOS[:7], [1.0]]).astype(np.float32)
    action = hold if n == 1 else {f"panda-{i}": hold for i in range(n)}
    for _ in range(5):
        env.step(action)
    start = time.perf_counter()
    for _ in range(steps):
        env.step(action)
    return steps / (time.perf_counter() - start)


def measure_env_steps(task: str, steps: int, camera_width: int, camera_height: int,
                      sim_backend: str) -> dict[str, Any]:
    """Both rates of ``task`` (``steps`` timed steps each, after a reset and 5 untimed steps) and their ratio, as
    the results JSON records them."""
    import gymnasium as gym

    import envs  # noqa: F401  (registers the -rf tasks)
    from envs.tasks.base import GLOBAL_CAMERA

    env = gym.make(task, obs_mode="rgb", sim_backend=sim_backend, camera_width=camera_width,
                   camera_height=camera_height)
    try:
        cameras = sorted(env.unwrapped._sensors)
        every = steps_per_second(env, [], steps)
        paused = steps_per_second(env, [GLOBAL_CAMERA], steps)
    finally:
        env.close()
    return {
        "date": dt.date.today().isoformat(), "task": task, "sim_backend": sim_backend,
        "camera_size": [camera_width, camera_height], "cameras": cameras, "steps": steps,
        "cpu": platform.processor() or platform.machine(), "steps_per_s_all_cameras": every,
        "steps_per_s_global_paused": paused, "ratio": paused / every,
    }


__all__ = ["measure_env_steps", "steps_per_second"]
