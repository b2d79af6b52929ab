"""The evaluation loop: one loaded policy per agent, routed through ``envs.router``, over seeded episodes.

:func:`run_rollout` is what ``scripts/rollout.py`` calls. It loads one policy per arm of the task (by
default ``<checkpoint_dir>/<task>_Agent<i>/``, its ``best/`` checkpoint), sizes the env cameras from the
policies' ``image_shape``, and runs ``num_episodes`` episodes with seeds ``seed, seed+1, ...``:

* CPU backend: ``num_envs`` worker processes (spawned), each with its own env, one episode at a time; with
  ``num_envs=1`` everything runs in this process. The models either run once in this process on the batched
  requests of all workers (``inference='shared'``, the default on CUDA; see ``rollout.inference``) or each
  worker loads its own copy (``'per-worker'``, the default on the CPU).
* GPU backend: one ManiSkill vectorised env of ``num_envs`` parallel envs, episodes in lock-step batches.

An episode runs until every success rule of the task has held at least once, or the step cap. Each
rule's first success step is kept, so success rates and episode lengths follow RoboFactory's rule (stop at
the first success) for ``success`` and the same logic for ``success_strict``. Results go to a JSON file,
rewritten atomically after every episode (``rollout.results``; ``resume`` continues from it), and optionally
one mp4 per episode under ``<video_dir>/<task>/``. An env worker process that dies is restarted and its episode
retried once (``rollout.workers``).

On the CPU backend each episode starts from a rebuilt scene (``reset`` with ``reconfigure=True``: PhysX keeps
state over plain resets) and reseeds its process's torch RNG with the episode's seed, so a seed's result does
not depend on which episodes ran before it or in which worker.
"""

from __future__ import annotations

import multiprocessing
import sys
import os
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from rf_dp_agents.architecture import own_camera as agent_camera
from rf_dp_agents.checkpoint import resolve_device
from rf_dp_agents.config import ModelConfig
from rf_dp_agents.policy import DiffusionPolicyAgent
from rf_dp_agents.progress import progress_bar
from rf_dp_agents.rollout.agents import (
    agent_keys,
    camera_size,
    checkpoint_paths,
    load_agent_policies,
    policy_labels,
    task_num_arms,
)
from rf_dp_agents.rollout.config import RolloutConfig
from rf_dp_agents.rollout.client import InferenceClient, RemoteModel
from rf_dp_agents.rollout.inference import InferenceServer, batch_sizes
from rf_dp_agents.rollout.metrics import EpisodeResult, format_summary
from rf_dp_agents.rollout.results import EpisodesFailed, ResultsFile, load_resume, noise_source, timing
from rf_dp_agents.rollout.session import (
    PRIMARY_RULE,
    EvalSession,
    build_router,
    episode_cap,
    make_env,
    success_rules,
)
from rf_dp_agents.rollout.workers import WorkerDeath, WorkerPool, set_session, time_limit


# ------------------------------------------------------------------------------------ worker processes
def _init_worker(cfg_dict: dict[str, Any], paths: list[str], threads: int) -> None:
    torch.set_num_threads(threads)
    session = EvalSession(RolloutConfig(**cfg_dict), [Path(p) for p in paths], num_envs=1)
    for policy in session.policies:
        policy.warmup([1])
    set_session(session)


def _init_shared_worker(
    cfg_dict: dict[str, Any], paths: list[str], configs: list[dict[str, Any]], slot: int, line: Any
) -> None:
    torch.set_num_threads(1)
    cfg = RolloutConfig(**cfg_dict)
    client = InferenceClient(slot, line)
    policies = [
        DiffusionPolicyAgent(RemoteModel(ModelConfig.from_dict(c["model"]), i, client), seed=cfg.seed + i,
                             metadata=c["metadata"], execute_steps=cfg.execute_steps,
                             temporal_ensemble=cfg.temporal_ensemble)
        for i, c in enumerate(configs)
    ]
    set_session(EvalSession(cfg, [Path(p) for p in paths], num_envs=1, policies=policies))


def _threads(cfg: RolloutConfig, processes: int) -> int:
    """Torch threads per process: the override, else half the cores per process (the renderer needs the rest)."""
    if cfg.torch_threads is not None:
        return cfg.torch_threads
    return max(1, (os.cpu_count() or 1) // (2 * processes))


def inference_mode(cfg: RolloutConfig, device: torch.device) -> str:
    """'in-process' (one process), 'shared' or 'per-worker' (CPU-backend worker processes), as ``cfg`` says."""
    if cfg.sim_backend == "gpu" or cfg.num_envs == 1 or cfg.num_episodes == 1:
        return "in-process"
    if cfg.inference == "auto":
        return "shared" if device.type == "cuda" else "per-worker"
    return cfg.inference


def run_episodes(
    cfg: RolloutConfig,
    paths: Sequence[Path],
    policies: Sequence[DiffusionPolicyAgent] | None = None,
    stats: dict[str, Any] | None = None,
    seeds: Sequence[int] | None = None,
    on_result: Callable[[EpisodeResult], None] | None = None,
    on_death: Callable[[WorkerDeath], None] | None = None,
) -> tuple[list[EpisodeResult], list[str]]:
    """Run ``seeds`` (default: every seed of ``cfg``); return the episode results (in seed order) and the success
    rules (empty when no episode ran).

    ``policies`` (already loaded from ``paths``) are used when the episodes run in this process, and serve
    every worker with shared inference (they are loaded here if not given). ``on_result`` gets each episode as
    it finishes, ``on_death`` each env worker death (``rollout.workers``). ``stats`` receives the inference mode,
    with shared inference the server's batching figures, and ``failed_seeds``: the seeds whose worker died on
    every try, with the reason (they have no result).
    """
    seeds = list(cfg.seeds if seeds is None else seeds)
    device = policies[0].device if policies else resolve_device(cfg.device)
    mode = inference_mode(cfg, device)
    failed: dict[int, str] = {}
    if stats is not None:
        stats["mode"] = mode
    bar = progress_bar(total=len(seeds), desc=f"{cfg.task} episodes", unit="ep", disable=not cfg.progress)
    results: list[EpisodeResult] = []
    rules: list[str] = []

    stop = time_limit(cfg.max_minutes)

    def finished(result: EpisodeResult) -> None:
        results.append(result)
        bar.update(1)
        bar.set_postfix(success=sum(r.success(PRIMARY_RULE) for r in results))
        if on_result is not None:
            on_result(result)

    try:
        if not seeds:
            pass
        elif mode == "in-process":
            torch.set_num_threads(_threads(cfg, 1))
            num_envs = cfg.num_envs if cfg.sim_backend == "gpu" else 1
            session = EvalSession(cfg, paths, num_envs=num_envs, policies=policies)
            for policy in session.policies:  # every env plans at once: one batch size
                policy.warmup([session.num_envs])
            try:
                for k in range(0, len(seeds), session.num_envs):
                    if stop is not None and stop():
                        break
                    for result in session.run_batch(seeds[k : k + session.num_envs]):
                        finished(result)
                rules = session.rules
            finally:
                session.close()
        else:
            workers = min(cfg.num_envs, len(seeds))
            names = [str(p) for p in paths]
            ctx = multiprocessing.get_context("spawn")
            if mode == "shared":
                policies = list(policies) if policies is not None else load_agent_policies(cfg, paths)
                server = InferenceServer([p.model for p in policies], workers, ctx, overlap=cfg.overlap_agents)
                for policy in policies:  # the server pads its batches to these sizes
                    policy.warmup(batch_sizes(workers))
                configs = [{"model": p.config.to_dict(), "metadata": p.metadata} for p in policies]

                def shared_args(slot: int) -> tuple:  # a fresh line to the server for each (re)started worker
                    return (cfg.to_dict(), names, configs, slot, server.reset_slot(slot))

                with server:
                    pool = WorkerPool(ctx, workers, _init_shared_worker, shared_args, server.release_worker_end)
                    failed = pool.run(seeds, finished, on_death, stop)
                if stats is not None:
                    stats["server"] = server.stats.to_dict()
            else:
                initargs = (cfg.to_dict(), names, _threads(cfg, workers))
                pool = WorkerPool(ctx, workers, _init_worker, lambda slot: initargs)
                failed = pool.run(seeds, finished, on_death, stop)
            rules = list(results[0].first_success_step) if results else []
    finally:
        bar.close()
    if stats is not None:
        stats["failed_seeds"] = failed
    return sorted(results, key=lambda r: r.seed), rules


def run_rollout(cfg: RolloutConfig) -> dict[str, Any]:
    """Evaluate the task's agents as ``cfg`` says; return the results document, written to ``cfg.output`` after
    every episode. With ``cfg.resume`` the episodes already in that file are kept and only the other seeds run.

    Seeds whose env worker died on both tries have no result: they are listed in the document's
    ``failed_seeds`` and the run ends with :class:`EpisodesFailed` naming them, after the other seeds ran.
    """
    num_arms = task_num_arms(cfg.task)
    paths = checkpoint_paths(cfg, num_arms)
    policies = load_agent_policies(cfg, paths)
    width, height = camera_size(cfg, policies, paths)
    policy_info = {
        key: {"checkpoint": str(path), "config": p.config.to_dict(), "chunk_execution": p.chunk_execution,
              "metadata": p.metadata}
        for key, path, p in zip(policy_labels(policies, num_arms), paths, policies)
    }
    noise = noise_source(cfg, inference_mode(cfg, policies[0].device))
    previous, previous_doc = load_resume(cfg, policy_info, noise) if cfg.resume else ([], {})
    header = {
        "task": cfg.task,
        "num_agents": num_arms,
        "execution": cfg.execution,
        "sim_backend": cfg.sim_backend,
        "num_envs": cfg.num_envs,
        "camera_size": [width, height],
        "max_episode_steps": episode_cap(cfg.task, cfg.max_episode_steps),
        "policies": policy_info,
    }
    results = ResultsFile(cfg, header, previous, previous_doc, noise)
    if previous_doc:
        print(f"resuming {cfg.output}: {results.resumed} episodes kept, {len(results.pending)} to run", file=sys.stderr)
    results.write()
    _, rules = run_episodes(cfg, paths, policies, stats=results.inference, seeds=results.pending,
                            on_result=results.add, on_death=lambda death: results.add_death(death.to_dict()))
    results.failed = results.inference.pop("failed_seeds")
    if cfg.max_minutes is not None and results.pending:
        print(f"--max-minutes {cfg.max_minutes:g} reached: {len(results.pending)} of {len(cfg.seeds)} seeds not run "
              f"(from seed {min(results.pending)}); {cfg.output} says complete: false, --resume runs them",
              file=sys.stderr)
    results.rules = rules or results.rules
    doc = results.write(complete=True)
    if results.failed:
        listing = "; ".join(f"seed {s}: {e}" for s, e in sorted(results.failed.items()))
        raise EpisodesFailed(
            f"{len(results.failed)} episode(s) have no result ({listing}); the other results are in {cfg.output}, "
            "and --resume runs the missing seeds again"
        )
    return doc


__all__ = [
    "EvalSession",
    "RolloutConfig",
    "PRIMARY_RULE",
    "agent_camera",
    "agent_keys",
    "build_router",
    "camera_size",
    "checkpoint_paths",
    "format_summary",
    "inference_mode",
    "load_agent_policies",
    "make_env",
    "run_episodes",
    "run_rollout",
    "success_rules",
    "task_num_arms",
    "timing",
]
