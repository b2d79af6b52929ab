"""Convert motion-planned demos (``demos/<task>/*.h5``) into zarr datasets: one per agent, or one shared.

Writes ``<out>/<task>_Agent<i>_<n>.zarr`` with ``data/img`` (agent i's head camera, uint8 (L,3,H,W)),
``data/state`` (measured 7 arm joints + gripper opening, or the action with ``--state-source action``,
RoboFactory's convention), ``data/action`` (L,8) and ``meta/episode_ends``. ``--architecture`` picks one of the
paper's four (``rf_dp_agents.architecture``): ``global-separate`` stores the global camera instead of the agent's
own (``<task>_Agent<i>_Global_<n>.zarr``), ``local-shared`` / ``global-shared`` write one dataset for a policy that
drives every arm (``<task>_Shared[_Global]_<n>.zarr``: every arm's state and action concatenated). The choice is
recorded in the dataset's attributes, where the trainer reads it. Episodes stream one at a time; a bad episode
stops the run with an error naming the file, episode and key, and leaves no dataset behind.

Example::

    python scripts/convert_to_zarr.py --task LiftBarrier-rf --all-agents --num 150
    python scripts/convert_to_zarr.py --task LiftBarrier-rf --architecture local-shared --num 150
"""

from __future__ import annotations

import concurrent.futures as futures
import multiprocessing
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import tyro

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rf_dp_agents.architecture import Architecture, ArchitectureName  # noqa: E402
from rf_dp_agents.data.convert import convert_agent, convert_shared, episode_agents, list_episodes  # noqa: E402
from rf_dp_agents.data.errors import DatasetError  # noqa: E402


@dataclass
class Args:
    """h5 demonstrations -> one zarr dataset per agent."""

    task: str = "LiftBarrier-rf"
    """Task id; episodes are read from ``<demos>/<task>/*.h5`` in name (seed) order."""
    architecture: ArchitectureName = "local-separate"
    """Which policies the data is for: each arm's own camera (local) or the global camera (global), one policy per
    arm (separate: one dataset per agent) or one policy for every arm (shared: one dataset)."""
    agent_id: int = 0
    """Agent to convert (ignored with --all-agents and for a shared architecture)."""
    all_agents: bool = False
    """Convert every agent of the task, one dataset each (a shared architecture always writes its one dataset)."""
    num: int | None = None
    """Use the first N episodes (default: all)."""
    state_source: Literal["measured", "action"] = "measured"
    """'measured': 7 arm joints + gripper opening as measured; 'action': the commanded action (RoboFactory)."""
    include_global_camera: bool = False
    """Also store head_camera_global as data/img_head_camera_global beside each policy's own camera(s)
    (<task>_Agent<i>_LocalGlobal_<n>.zarr, <task>_Shared_LocalGlobal_<n>.zarr)."""
    demos: Path = Path("demos")
    """Root of the demonstrations."""
    out: Path = Path("data/zarr")
    """Output folder of the zarr datasets."""
    overwrite: bool = False
    """Replace an existing dataset of the same name."""
    num_procs: int | None = None
    """Agents converted side by side in worker processes (default: one per agent, at most the CPU count)."""


def convert(args: Args) -> list[Path]:
    """Run the conversion; returns the written dataset paths."""
    refs = list_episodes(args.demos / args.task)
    if args.num is not None:
        if args.num < 1:
            raise ValueError(f"--num must be >= 1, got {args.num}")
        if args.num > len(refs):
            raise DatasetError(f"{args.demos / args.task}: --num {args.num} asked but only {len(refs)} episodes exist")
        refs = refs[: args.num]
    n_agents = len(episode_agents(refs[0]))
    arch = Architecture(args.architecture, args.include_global_camera)
    if arch.shared:
        agent_ids: list[int | None] = [None]
    else:
        agent_ids = list(range(n_agents)) if args.all_agents else [args.agent_id]
    for i in agent_ids:
        if i is not None and not 0 <= i < n_agents:
            raise ValueError(f"--agent-id {i} out of range: {args.task} demos have {n_agents} agents")
    if args.num_procs is not None and args.num_procs < 1:
        raise ValueError(f"--num-procs must be >= 1, got {args.num_procs}")
    procs = min(len(agent_ids), args.num_procs or os.cpu_count() or 1)
    jobs = [(refs, args.out / arch.zarr_name(args.task, len(refs), i), i, args) for i in agent_ids]
    written = []
    if procs == 1:
        done = map(_convert_one, jobs)
    else:
        pool = futures.ProcessPoolExecutor(procs, mp_context=multiprocessing.get_context("spawn"))
        done = pool.map(_convert_one, jobs)
    try:
        for (_, path, i, _), result in zip(jobs, done):
            print(f"{arch.label if i is None else f'agent {i}'}: {len(refs)} episodes -> {result}")
            written.append(path)
    finally:
        if procs > 1:
            pool.shutdown(cancel_futures=True)
    return written


def _convert_one(job: tuple[list, Path, int | None, Args]) -> Path:
    refs, path, agent_id, args = job
    options = dict(state_source=args.state_source, include_global_camera=args.include_global_camera,
                   overwrite=args.overwrite, architecture=args.architecture)
    if agent_id is None:
        return convert_shared(refs, path, **options)  # type: ignore[arg-type]
    return convert_agent(refs, path, agent_id=agent_id, **options)  # type: ignore[arg-type]


def main() -> None:
    """CLI entry point."""
    try:
        convert(tyro.cli(Args))
    except (DatasetError, ValueError, FileExistsError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
