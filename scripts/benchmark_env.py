#!/usr/bin/env python
"""Env steps per second of an -rf task on this machine's simulator, every camera rendered against the global
camera paused (what rollout episodes that record no video run). Prints both rates and their ratio and writes
them to a JSON file.

  python scripts/benchmark_env.py                                  # LiftBarrier-rf, 320x240 cameras, CPU backend
  python scripts/benchmark_env.py --task ThreeRobotsStackCube-rf --steps 100
"""

from __future__ import annotations

import datetime as dt
import json
import platform
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import gymnasium as gym
import numpy as np
import tyro

import envs  # noqa: F401  (registers the -rf tasks)
from envs.tasks import TASK_IDS
from envs.tasks.base import GLOBAL_CAMERA, PANDA_INIT_QPOS


@dataclass
class Args:
    """Benchmark settings."""

    task: str = "LiftBarrier-rf"
    """Task id."""
    steps: int = 60
    """Timed env steps per setting (after a reset and 5 untimed steps)."""
    camera_width: int = 320
    """Width of every sensor camera (RoboFactory's default)."""
    camera_height: int = 240
    """Height of every sensor camera."""
    sim_backend: str = "cpu"
    """ManiSkill simulation backend."""
    output: Path | None = None
    """Results JSON (default: benchmarks/results/<date>-<backend>-env-steps.json)."""


def steps_per_second(env: gym.Env, paused: list[str], steps: int) -> float:
    """Env steps per second with the sensor cameras ``paused`` left out, every arm holding its initial pose."""
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


def main(args: Args) -> int:
    if args.task not in TASK_IDS:
        print(f"error: unknown task {args.task!r}; choose from {', '.join(TASK_IDS)}", file=sys.stderr)
        return 1
    env = gym.make(args.task, obs_mode="rgb", sim_backend=args.sim_backend, camera_width=args.camera_width,
                   camera_height=args.camera_height)
    try:
        cameras = sorted(env.unwrapped._sensors)
        every = steps_per_second(env, [], args.steps)
        paused = steps_per_second(env, [GLOBAL_CAMERA], args.steps)
    finally:
        env.close()
    res = {
        "date": dt.date.today().isoformat(), "task": args.task, "sim_backend": args.sim_backend,
        "camera_size": [args.camera_width, args.camera_height], "cameras": cameras, "steps": args.steps,
        "cpu": platform.processor() or platform.machine(), "steps_per_s_all_cameras": every,
        "steps_per_s_global_paused": paused, "ratio": paused / every,
    }
    print(f"{args.task}, {len(cameras)} cameras at {args.camera_width}x{args.camera_height}, {args.sim_backend} "
          f"backend: {every:.1f} steps/s with every camera, {paused:.1f} with {GLOBAL_CAMERA} paused "
          f"({paused / every:.2f}x)")
    out = args.output or Path("benchmarks/results") / f"{res['date']}-{args.sim_backend}-env-steps.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=2) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main(tyro.cli(Args)))
