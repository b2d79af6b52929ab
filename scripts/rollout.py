#!/usr/bin/env python
"""Evaluate trained agents in the simulator: ``python scripts/rollout.py --task LiftBarrier-rf --record-video``.

Loads ``checkpoints/<task>_Agent<i>/`` (best, else last) for every agent, runs seeded episodes, prints the
success rate (95% Wilson interval) per success rule and the episode lengths, writes a results JSON and,
with ``--record-video``, one mp4 per episode under ``videos/<task>/``. See ``--help`` for every option.
The results JSON is rewritten after every episode; ``--resume`` continues an interrupted run from it.
"""

import sys
from pathlib import Path

import tyro

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the envs package lives beside rf_dp_agents

from rf_dp_agents.rollout.config import RolloutConfig  # noqa: E402


def main() -> int:
    cfg = tyro.cli(RolloutConfig)
    from rf_dp_agents.rollout.results import EpisodesFailed
    from rf_dp_agents.rollout.runner import format_summary, run_rollout

    try:
        doc = run_rollout(cfg)
    except EpisodesFailed as err:  # seeds whose env worker died twice: the others' results are in --output
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(format_summary(doc["summary"]))
    t = doc["timing"]
    per_env = t["env_steps_per_second_per_env"]
    print(f"{doc['summary']['env_steps']} env steps in {t['wall_seconds']:.1f} s"
          + ("" if per_env is None else f" ({per_env:.1f} steps/s per env while running episodes)"))
    server = doc["inference"].get("server")
    if server and server["batches"]:
        wall = t["wall_seconds"] or float("inf")
        busy = server["busy_seconds"] / wall
        summed = server["model_seconds"] / wall
        print(f"shared inference: {server['batches']} model calls, {server['mean_rows_per_batch']:.1f} rows per call, "
              f"a model running {100 * busy:.0f}% of the wall time (calls summed {100 * summed:.0f}%, at most "
              f"{server['max_concurrent_calls']} at once)")
    print(f"results: {cfg.output}")
    videos = [ep["video"] for ep in doc["episodes"] if ep["video"]]
    if videos:
        print(f"videos ({len(videos)}): {Path(videos[0]).parent}/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
