"""Generate motion-planned demonstrations of an -rf task: ``demos/<task>/seed_<s>.h5`` + ``.json`` per episode.

Seeds ``seed, seed+1, ...`` are solved in parallel worker processes (multiprocessing, spawn). A worker plans
each seed without rendering, replays successful plans with the cameras on and writes the episode into a
staging folder; the main process accepts successes in seed order until ``--num`` are kept (or the attempt
cap is hit), moves them to their final names, and reports the planner success rate and failure causes.

Rendering dominates the cost on a CPU renderer, so the two halves can also run apart: ``--no-render``
plans and writes episodes without images (seconds each), and ``--replay-from <dir>`` re-records such
episodes with cameras from their seeds and actions, with no motion planner needed (for instance on a
machine with a GPU renderer).

Example::

    python scripts/generate_data.py --task LiftBarrier-rf --num 150 --num-procs 2
    python scripts/generate_data.py --task LiftBarrier-rf --num 150 --no-render --out demos_state
    python scripts/generate_data.py --task LiftBarrier-rf --num 150 --replay-from demos_state/LiftBarrier-rf
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import shutil
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import tyro
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


@dataclass
class Args:
    """Motion-planned demonstration generation."""

    task: str = "LiftBarrier-rf"
    """Task id (a gymnasium id registered by ``import envs``)."""
    num: int = 150
    """Number of successful episodes to keep."""
    num_procs: int = 1
    """Worker processes (each holds its own simulator)."""
    seed: int = 0
    """First env seed; seeds are tried in increasing order and successes are kept in seed order."""
    max_attempts: int | None = None
    """Most seeds to try before giving up (default: 3 * num + 10)."""
    save_video: bool = False
    """Also write an mp4 per kept episode (all cameras side by side) under ``<out>/<task>/videos``."""
    camera_width: int = 320
    """Width of every camera image (pixels)."""
    camera_height: int = 240
    """Height of every camera image (pixels)."""
    cameras: tuple[str, ...] = ()
    """Cameras to record (default: all of the task's, e.g. head_camera_agent0/1 and head_camera_global)."""
    out: Path = Path("demos")
    """Output root; episodes go to ``<out>/<task>/``."""
    render: bool = True
    """Record camera images; --no-render keeps actions, joints and success flags only (re-render with --replay-from)."""
    replay_from: Path | None = None
    """Folder of existing episodes (e.g. from --no-render; the --out root of that run works too) to re-record with
    cameras instead of planning."""


def episode_name(seed: int) -> str:
    """File stem of the episode recorded from ``seed`` (sorts in seed order)."""
    return f"seed_{seed:06d}"


_RUNNER: dict[str, Any] = {}


def _init_worker(replay: bool, task: str, width: int, height: int, cameras: tuple[str, ...]) -> None:
    if replay:
        from envs.demo_io import EpisodeReplayer

        _RUNNER["replayer"] = EpisodeReplayer(task, camera_width=width, camera_height=height, cameras=cameras or None)
    else:
        from envs.solvers.runner import DemoRunner

        _RUNNER["runner"] = DemoRunner(task, camera_width=width, camera_height=height, cameras=cameras or None)


def _attempt(job: tuple[int, str, str | None, bool]) -> dict[str, Any]:
    seed, h5_path, video_path, render = job
    return _RUNNER["runner"].attempt(seed, h5_path, video_path, render=render).to_dict()


def _rerecord(job: tuple[str, str, str, str | None]) -> dict[str, Any]:
    from envs.demo_io import EpisodeRef, read_actions, read_seed

    src, traj, h5_path, video_path = job
    ref = EpisodeRef(Path(src), traj)
    seed, actions = read_seed(ref), read_actions(ref)
    start = time.perf_counter()
    ok, strict = _RUNNER["replayer"].record(seed, actions, h5_path, video_path, extra={"source": str(ref)})
    return {
        "seed": seed,
        "outcome": "success" if ok else "replay failed",
        "message": "" if ok else f"replaying {ref} did not succeed",
        "steps": len(actions),
        "plan_seconds": 0.0,
        "record_seconds": time.perf_counter() - start,
        "success_strict": strict,
        "path": h5_path if ok else None,
    }


def _move(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    os.replace(src, dst)


def generate(args: Args) -> dict[str, Any]:
    """Run the generation and return the summary written to ``<out>/<task>/generation_report.json``."""
    if args.num < 1:
        raise ValueError(f"--num must be >= 1, got {args.num}")
    if args.num_procs < 1:
        raise ValueError(f"--num-procs must be >= 1, got {args.num_procs}")
    if not args.render and args.replay_from is not None:
        raise ValueError("--no-render and --replay-from exclude each other (replaying is for rendering)")
    max_attempts = args.max_attempts if args.max_attempts is not None else 3 * args.num + 10
    task_dir = args.out / args.task
    staging = task_dir / f".staging-{os.getpid()}"
    staging.mkdir(parents=True, exist_ok=True)

    video = args.save_video and args.render

    def job(seed: int) -> tuple[int, str, str | None, bool]:
        stem = staging / episode_name(seed)
        return seed, str(stem.with_suffix(".h5")), str(stem.with_suffix(".mp4")) if video else None, args.render

    if args.replay_from is not None:
        from envs.demo_io import list_episodes, read_seed

        source_dir = args.replay_from
        if (source_dir / args.task).is_dir():  # the --out root of an earlier run: its <task>/ folder
            source_dir = source_dir / args.task
        sources = list_episodes(source_dir)[:max_attempts]
        worker, jobs = _rerecord, []
        for ref in sources:
            stem = staging / episode_name(read_seed(ref))
            jobs.append((str(ref.path), ref.traj, str(stem.with_suffix(".h5")), str(stem.with_suffix(".mp4")) if video else None))
    else:
        worker, jobs = _attempt, (job(s) for s in range(args.seed, args.seed + max_attempts))

    results: list[dict[str, Any]] = []
    kept: list[int] = []
    start = time.perf_counter()
    ctx = mp.get_context("spawn")
    bar = tqdm(total=args.num, desc=f"{args.task} demos", unit="demo")
    pool = ctx.Pool(
        args.num_procs,
        initializer=_init_worker,
        initargs=(args.replay_from is not None, args.task, args.camera_width, args.camera_height, tuple(args.cameras)),
    )
    try:
        for result in pool.imap(worker, jobs):
            results.append(result)
            if result["outcome"] == "success":
                stem = episode_name(result["seed"])
                for suffix in (".h5", ".json"):
                    _move(staging / f"{stem}{suffix}", task_dir / f"{stem}{suffix}")
                if video:
                    _move(staging / f"{stem}.mp4", task_dir / "videos" / f"{stem}.mp4")
                kept.append(result["seed"])
                bar.update(1)
            else:
                tqdm.write(f"seed {result['seed']}: {result['outcome']}: {result['message']}")
            bar.set_postfix(success_rate=f"{len(kept) / len(results):.2f}", tried=len(results))
            if len(kept) >= args.num:
                break
    finally:
        pool.terminate()
        pool.join()
        bar.close()
        shutil.rmtree(staging, ignore_errors=True)
    elapsed = time.perf_counter() - start
    causes = Counter(r["outcome"] for r in results if r["outcome"] != "success")
    succeeded = [r for r in results if r["outcome"] == "success"]
    summary = {
        "task": args.task,
        "camera": None if not args.render else [args.camera_width, args.camera_height],
        "mode": "replay" if args.replay_from is not None else ("plan" if args.render else "plan, no images"),
        "num_procs": args.num_procs,
        "attempts": len(results),
        "kept": len(kept),
        "planner_success_rate": len(kept) / max(len(results), 1),
        "failure_causes": dict(causes),
        "strict_success_rate_of_kept": (
            sum(bool(r["success_strict"]) for r in succeeded) / len(succeeded)
            if succeeded and all(r["success_strict"] is not None for r in succeeded)
            else None
        ),
        "mean_episode_steps": sum(r["steps"] for r in succeeded) / max(len(succeeded), 1),
        "wall_seconds": elapsed,
        "demos_per_minute": 60.0 * len(kept) / max(elapsed, 1e-9),
        "kept_seeds": kept,
        "attempts_detail": results,
    }
    report = task_dir / "generation_report.json"
    tmp = report.with_name(f".{report.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(summary, indent=2))
    os.replace(tmp, report)
    print(
        f"{args.task}: kept {len(kept)}/{args.num} from {len(results)} seeds "
        f"(planner success {summary['planner_success_rate']:.1%}); failures {dict(causes) or 'none'}; "
        f"{summary['demos_per_minute']:.2f} demos/min over {elapsed:.0f} s -> {task_dir}"
    )
    if len(kept) < args.num:
        print(f"warning: only {len(kept)} of {args.num} demos after {len(results)} attempts", file=sys.stderr)
    return summary


def main() -> None:
    """CLI entry point."""
    summary = generate(tyro.cli(Args))
    if summary["kept"] < 1:
        sys.exit(1)


if __name__ == "__main__":
    main()
