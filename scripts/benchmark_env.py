#!/usr/bin/env python
"""Env steps per second of an -rf task on this machine's simulator, every camera rendered against the global
camera paused (what rollout episodes that record no video run). Prints both rates and their ratio and writes
them to a JSON file (the measurement: :mod:`rf_dp_agents.bench.env_steps`).

  python scripts/benchmark_env.py                                  # LiftBarrier-rf, 320x240 cameras, CPU backend
  python scripts/benchmark_env.py --task ThreeRobotsStackCube-rf --steps 100
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path

import tyro

from envs.tasks import TASK_IDS
from envs.tasks.base import GLOBAL_CAMERA
from rf_dp_agents.bench.env_steps import measure_env_steps


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


def main(args: Args) -> int:
    if args.task not in TASK_IDS:
        print(f"error: unknown task {args.task!r}; choose from {', '.join(TASK_IDS)}", file=sys.stderr)
        return 1
    res = measure_env_steps(args.task, args.steps, args.camera_width, args.camera_height, args.sim_backend)
    every, paused = res["steps_per_s_all_cameras"], res["steps_per_s_global_paused"]
    print(f"{args.task}, {len(res['cameras'])} cameras at {args.camera_width}x{args.camera_height}, {args.sim_backend} "
          f"backend: {every:.1f} steps/s with every camera, {paused:.1f} with {GLOBAL_CAMERA} paused "
          f"({paused / every:.2f}x)")
    out = args.output or Path("benchmarks/results") / f"{res['date']}-{args.sim_backend}-env-steps.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=2) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main(tyro.cli(Args)))
