"""Generate motion-planned demonstrations of an -rf task: ``demos/<task>/seed_<s>.h5`` + ``.json`` per episode.

Seeds ``seed, seed+1, ...`` are solved in parallel worker processes (multiprocessing, spawn). A worker plans
each seed without rendering, replays successful plans with the cameras on and writes the episode into a
staging folder; the main process accepts successes in seed order until ``--num`` are kept (or the attempt
cap is hit), moves them to their final names, and reports the planner success rate and failure causes.

Rendering dominates the cost on a CPU renderer, so the two halves can also run apart: ``--no-render``
plans and writes episodes without images (seconds each), and ``--replay-from <dir>`` re-records such
episodes with cameras from their seeds and actions, with no motion planner needed (for instance on a
machine with a GPU renderer).

``<out>/<task>/generation_report.json`` is rewritten (temporary name + rename) after every attempt, with
``"complete": false`` until the run ends. ``--resume`` continues an interrupted run from it: the seeds it
records (kept or failed) are not tried again, the report covers the whole run, and the episodes kept are the
ones an uninterrupted run keeps (attempts are taken in seed order and each seed's outcome is its own).

Example::

    python scripts/generate_data.py --task LiftBarrier-rf --num 150 --num-procs 2
    python scripts/generate_data.py --task LiftBarrier-rf --num 150 --no-render --out demos_state
    python scripts/generate_data.py --task LiftBarrier-rf --num 150 --replay-from demos_state/LiftBarrier-rf
    python scripts/generate_data.py --task LiftBarrier-rf --num 150 --num-procs 2 --resume   # after an interruption
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

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rf_dp_agents.progress import progress_bar  # noqa: E402


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
    resume: bool = False
    """Continue the interrupted run whose report is in ``<out>/<task>/``: seeds it tried are skipped, its kept
    episodes stay; --num, --max-attempts and --num-procs may change, the other settings must match."""


REPORT_NAME = "generation_report.json"
RESUME_FIELDS = ("task", "seed", "mode", "camera", "cameras", "save_video", "replay_from")
"""Report entries an interrupted run and its --resume must agree on (they change what each seed produces)."""


def run_settings(args: Args) -> dict[str, Any]:
    """The settings that decide each seed's outcome and files, as the report stores them."""
    return {
        "task": args.task,
        "seed": args.seed,
        "mode": "replay" if args.replay_from is not None else ("plan" if args.render else "plan, no images"),
        "camera": None if not args.render else [args.camera_width, args.camera_height],
        "cameras": list(args.cameras),
        "save_video": bool(args.save_video and args.render),
        "replay_from": None if args.replay_from is None else str(args.replay_from),
    }


def load_resume(args: Args, task_dir: Path) -> tuple[list[dict[str, Any]], float]:
    """The attempts an interrupted run recorded in ``task_dir`` and its wall time, checked against ``args``.

    A kept episode whose files are gone is dropped (its seed is tried again). No report: nothing to resume.
    """
    report = task_dir / REPORT_NAME
    if not report.is_file():
        print(f"--resume: no {report} yet, starting from seed {args.seed}", file=sys.stderr)
        return [], 0.0
    try:
        doc = json.loads(report.read_text())
        before, attempts = doc["settings"], list(doc["attempts_detail"])
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError) as err:
        raise ValueError(f"{report}: cannot resume: not a generation report ({type(err).__name__}: {err})") from None
    now = run_settings(args)
    for key in RESUME_FIELDS:
        if before.get(key) != now[key]:
            raise ValueError(
                f"{report}: cannot resume: the run was made with {key}={before.get(key)!r}, this one has "
                f"{now[key]!r} (only --num, --max-attempts and --num-procs may change)"
            )
    kept = []
    for attempt in attempts:
        stem = task_dir / episode_name(int(attempt["seed"]))
        files = [stem.with_suffix(".h5"), stem.with_suffix(".json")]
        if now["save_video"]:
            files.append(task_dir / "videos" / f"{stem.name}.mp4")
        if attempt["outcome"] == "success" and not all(f.is_file() for f in files):
            print(f"--resume: {stem.name} is missing its files; trying seed {attempt['seed']} again", file=sys.stderr)
            continue
        kept.append(attempt)
    return kept, float(doc.get("wall_seconds", 0.0))


def remove_stale_staging(task_dir: Path) -> None:
    """Delete the staging folders that killed runs left behind (their process is gone)."""
    for folder in task_dir.glob(".staging-*"):
        pid = folder.name.rsplit("-", 1)[-1]
        if pid.isdigit() and int(pid) != os.getpid() and not _alive(int(pid)):
            shutil.rmtree(folder, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


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
    task_dir.mkdir(parents=True, exist_ok=True)
    previous, wall_before = load_resume(args, task_dir) if args.resume else ([], 0.0)
    if args.resume:
        remove_stale_staging(task_dir)
    done_seeds = {int(r["seed"]) for r in previous}
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
            seed = read_seed(ref)
            stem = staging / episode_name(seed)
            if seed not in done_seeds:
                jobs.append((str(ref.path), ref.traj, str(stem.with_suffix(".h5")), str(stem.with_suffix(".mp4")) if video else None))
    else:
        seeds = [s for s in range(args.seed, args.seed + max_attempts) if s not in done_seeds]
        worker, jobs = _attempt, (job(s) for s in seeds)

    results: list[dict[str, Any]] = list(previous)
    kept: list[int] = [int(r["seed"]) for r in previous if r["outcome"] == "success"]
    start = time.perf_counter()

    def report(complete: bool) -> dict[str, Any]:
        summary = summarize(args, results, kept, wall_before + time.perf_counter() - start, complete)
        write_report(task_dir / REPORT_NAME, summary)
        return summary

    if previous:
        print(f"--resume: {len(previous)} seeds already tried, {len(kept)} kept", file=sys.stderr)
    ctx = mp.get_context("spawn")
    bar = progress_bar(total=args.num, initial=min(len(kept), args.num), desc=f"{args.task} demos", unit="demo")
    pool = None if len(kept) >= args.num else ctx.Pool(
        args.num_procs,
        initializer=_init_worker,
        initargs=(args.replay_from is not None, args.task, args.camera_width, args.camera_height, tuple(args.cameras)),
    )
    try:
        for result in pool.imap(worker, jobs) if pool is not None else ():
            results.append(result)
            if result["outcome"] == "success":
                stem = episode_name(result["seed"])
                for suffix in (".h5", ".json"):
                    _move(staging / f"{stem}{suffix}", task_dir / f"{stem}{suffix}")
                if video:
                    _move(staging / f"{stem}.mp4", task_dir / "videos" / f"{stem}.mp4")
                result["path"] = str(task_dir / f"{stem}.h5")
                kept.append(result["seed"])
                bar.update(1)
            else:
                bar.write(f"seed {result['seed']}: {result['outcome']}: {result['message']}")
            bar.set_postfix(success_rate=f"{len(kept) / len(results):.2f}", tried=len(results))
            report(complete=False)  # after every attempt: what --resume continues from
            if len(kept) >= args.num:
                break
    finally:
        if pool is not None:
            pool.terminate()
            pool.join()
        bar.close()
        shutil.rmtree(staging, ignore_errors=True)
    summary = report(complete=True)
    elapsed = summary["wall_seconds"]
    print(
        f"{args.task}: kept {len(kept)}/{args.num} from {len(results)} seeds "
        f"(planner success {summary['planner_success_rate']:.1%}); failures {summary['failure_causes'] or 'none'}; "
        f"{summary['demos_per_minute']:.2f} demos/min over {elapsed:.0f} s -> {task_dir}"
    )
    if len(kept) < args.num:
        print(f"warning: only {len(kept)} of {args.num} demos after {len(results)} attempts", file=sys.stderr)
    return summary


def summarize(
    args: Args, results: list[dict[str, Any]], kept: list[int], wall: float, complete: bool
) -> dict[str, Any]:
    """The generation report: settings, attempts (kept and failed, with causes), rates and timing of the run."""
    causes = Counter(r["outcome"] for r in results if r["outcome"] != "success")
    succeeded = [r for r in results if r["outcome"] == "success"]
    settings = run_settings(args)
    return {
        "task": args.task,
        "camera": settings["camera"],
        "mode": settings["mode"],
        "settings": settings,
        "complete": complete,
        "num": args.num,
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
        "wall_seconds": wall,
        "demos_per_minute": 60.0 * len(kept) / max(wall, 1e-9),
        "kept_seeds": kept,
        "attempts_detail": results,
    }


def write_report(path: Path, summary: dict[str, Any]) -> None:
    """Write the report through a temporary name and a rename."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(summary, indent=2))
    os.replace(tmp, path)


def main() -> None:
    """CLI entry point."""
    summary = generate(tyro.cli(Args))
    if summary["kept"] < 1:
        sys.exit(1)


if __name__ == "__main__":
    main()
