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

import hashlib
import multiprocessing
import sys
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import gymnasium as gym
import numpy as np
import torch
from tqdm.auto import tqdm

import envs.tasks  # noqa: F401  (registers the -rf tasks)
from envs.router import MultiAgentRouter, default_routes
from envs.tasks.base import GLOBAL_CAMERA
from rf_dp_agents.architecture import own_camera as agent_camera
from rf_dp_agents.checkpoint import resolve_device
from rf_dp_agents.config import ModelConfig
from rf_dp_agents.policy import DiffusionPolicyAgent
from rf_dp_agents.rollout.agents import (
    agent_keys,
    camera_size,
    checkpoint_paths,
    load_agent_policies,
    policy_labels,
    task_num_arms,
)
from rf_dp_agents.rollout.config import RolloutConfig
from rf_dp_agents.rollout.execution import Execution, as_agent_actions, make_execution, to_env_action
from rf_dp_agents.rollout.inference import InferenceClient, InferenceServer, RemoteModel, batch_sizes
from rf_dp_agents.rollout.metrics import ConditionCount, EpisodeResult, condition_flags, format_summary
from rf_dp_agents.rollout.results import EpisodesFailed, ResultsFile, load_resume, noise_source, timing
from rf_dp_agents.rollout.workers import WorkerDeath, WorkerPool, set_session, time_limit
from rf_dp_agents.rollout.video import EpisodeVideoWriter, compose_frame, episode_video_path

PRIMARY_RULE = "success"
"""RoboFactory's success flag; other ``info`` flags named ``success_*`` (e.g. ``success_strict``) are reported too."""


def make_env(
    task: str, width: int, height: int, num_envs: int, sim_backend: str, max_episode_steps: int | None, **extra: Any
) -> Any:
    """An ``obs_mode='rgb'``, ``pd_joint_pos`` env of ``task`` with every camera at ``width`` x ``height``."""
    kwargs: dict[str, Any] = dict(
        obs_mode="rgb",
        control_mode="pd_joint_pos",
        render_mode=None,
        camera_width=width,
        camera_height=height,
        num_envs=num_envs,
        sim_backend="physx_cuda" if sim_backend == "gpu" else "physx_cpu",
    )
    if max_episode_steps is not None:
        kwargs["max_episode_steps"] = int(max_episode_steps)
    kwargs.update(extra)
    return gym.make(task, **kwargs)


def episode_cap(task: str, override: int | None) -> int:
    """Step cap of an episode: the override, else the task's registered ``max_episode_steps``."""
    if override is not None:
        return int(override)
    cap = gym.spec(task).max_episode_steps
    if not cap:
        raise ValueError(f"{task} has no max_episode_steps; pass --max-episode-steps")
    return int(cap)


def success_rules(info: Mapping[str, Any]) -> list[str]:
    """The success flags of ``info``: ``success`` first, then every ``success_*`` flag in name order."""
    if PRIMARY_RULE not in info:
        raise ValueError(f"the env's info has no {PRIMARY_RULE!r} flag; its keys are {sorted(info)}")
    return [PRIMARY_RULE] + sorted(k for k in info if k.startswith(PRIMARY_RULE + "_"))


def build_router(env: Any, policies: Sequence[DiffusionPolicyAgent]) -> MultiAgentRouter:
    """RoboFactory's routing: policy i sees ``head_camera_agent<i>`` and arm i's joint state (or what its checkpoint's
    architecture record says); one shared policy drives every arm."""
    return MultiAgentRouter(env, default_routes(env, policies))


def _np(x: Any) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    return np.asarray(x)


@dataclass
class _Track:
    """Per-env bookkeeping of one batch of episodes."""

    seed: int
    first: dict[str, int | None]
    steps: int = 0
    policy_steps: int = 0
    planning: tuple[int, int] | None = None
    """(TOPP calls, failures) when the episode ended before the batch did."""
    done: bool = False
    conditions: ConditionCount = field(default_factory=ConditionCount)
    writer: EpisodeVideoWriter | None = None
    digest: Any = field(default_factory=lambda: hashlib.blake2b(digest_size=8))
    """Hash of every env action sent to this env (float32 bytes): equal digests mean equal trajectories."""


class EvalSession:
    """One env (possibly vectorised), its policies, router and execution: runs batches of seeded episodes."""

    def __init__(
        self,
        cfg: RolloutConfig,
        paths: Sequence[Path],
        num_envs: int,
        policies: Sequence[DiffusionPolicyAgent] | None = None,
    ) -> None:
        self.cfg = cfg
        self.policies = list(policies) if policies is not None else load_agent_policies(cfg, paths)
        width, height = camera_size(cfg, self.policies, paths)
        self.env = make_env(cfg.task, width, height, num_envs, cfg.sim_backend, cfg.max_episode_steps)
        self.num_envs = num_envs
        self.max_steps = episode_cap(cfg.task, cfg.max_episode_steps)
        self.router = build_router(self.env, self.policies)
        self.execution: Execution = make_execution(cfg.execution, self.env)
        self.multi_agent = self.router.multi_agent
        self.keys = list(self.router.agent_keys)
        evaluated = self.env.unwrapped.evaluate()
        self.rules = success_rules(evaluated)
        self.conditions = condition_flags(evaluated, self.rules)
        self.cameras = [GLOBAL_CAMERA] + [agent_camera(i) for i in range(len(self.keys))]
        read = {cam for plan in self.router.plans.values() for _, cam in plan.camera_map}
        self.video_only_cameras = [cam for cam in self.cameras if cam not in read]
        """Cameras only videos show: paused in batches that record none (CPU backend)."""

    def _frame(self, obs: dict, b: int, step: int, track: _Track) -> np.ndarray:
        sensors = obs["sensor_data"]
        images = {cam: _np(sensors[cam]["rgb"][b]) for cam in self.cameras if cam in sensors}
        status = {rule: track.first[rule] is not None for rule in self.rules}
        return compose_frame(images, step, self.max_steps, status)

    def _records(self, seed: int) -> bool:
        """Whether the episode of ``seed`` is recorded (``--record-video``, within ``--video-episodes``)."""
        limit = self.cfg.video_episodes
        return self.cfg.record_video and (limit is None or seed - self.cfg.seed < limit)

    def run_batch(self, seeds: Sequence[int]) -> list[EpisodeResult]:
        """Run one episode in each env of the batch, env b seeded ``seeds[b]`` (fewer seeds than envs: the rest idle)."""
        n = self.num_envs
        if not 0 < len(seeds) <= n:
            raise ValueError(f"run_batch needs 1..{n} seeds, got {len(seeds)}")
        padded = list(seeds) + [int(seeds[-1]) + 1 + k for k in range(n - len(seeds))]
        torch.manual_seed(int(seeds[0]))  # the policies' sampling noise follows the episode's seed
        started = time.perf_counter()
        recorded = [self._records(int(s)) for s in seeds]
        if hasattr(self.env.unwrapped, "pause_cameras"):
            self.env.unwrapped.pause_cameras([] if any(recorded) else self.video_only_cameras)
        if self.cfg.sim_backend == "cpu":
            # A rebuilt scene for every episode: after a plain reset PhysX keeps state from the previous episode, so
            # a seed's result would depend on the seeds this env ran before. New scene, new agents: new execution.
            obs, _ = self.env.reset(seed=padded[0], options={"reconfigure": True})
            self.execution = make_execution(self.cfg.execution, self.env)
        else:
            obs, _ = self.env.reset(seed=padded if n > 1 else padded[0])
        self.execution.begin_episode(n)
        tracks = [_Track(seed=int(s), first={r: None for r in self.rules}) for s in padded]
        for b, track in enumerate(tracks[: len(seeds)]):
            if recorded[b]:
                track.writer = EpisodeVideoWriter(episode_video_path(self.cfg.video_dir, self.cfg.task, track.seed))
                track.writer.append(self._frame(obs, b, 0, track))
        for track in tracks[len(seeds):]:
            track.done = True
        episode_start = np.ones(n, dtype=bool)
        step = 0
        try:
            while step < self.max_steps and not all(t.done for t in tracks):
                action = self.router.act(obs, episode_start=episode_start, deterministic=self.cfg.deterministic)
                episode_start = np.zeros(n, dtype=bool)
                for track in tracks:
                    track.policy_steps += 0 if track.done else 1
                for env_action in self.execution.expand(as_agent_actions(action, self.keys)):
                    obs, _, _, _, info = self.env.step(to_env_action(env_action, self.multi_agent))
                    step += 1
                    sent = [np.asarray(_np(env_action[k]), dtype=np.float32) for k in self.keys]
                    flags = {r: _np(info[r]).reshape(-1) for r in [*self.rules, *self.conditions]}
                    for b, track in enumerate(tracks):
                        if track.done:
                            continue
                        for a in sent:
                            track.digest.update(np.ascontiguousarray(a[b]).tobytes())
                        track.steps = step
                        track.conditions.add({c: flags[c][b] for c in self.conditions})
                        for r in self.rules:
                            if track.first[r] is None and bool(flags[r][b]):
                                track.first[r] = step
                        track.done = all(v is not None for v in track.first.values())
                        if track.done:
                            ex = self.execution
                            track.planning = (int(ex.planning_calls[b]), int(ex.planning_failures[b]))
                        if track.writer is not None:
                            track.writer.append(self._frame(obs, b, step, track))
                    if step >= self.max_steps or all(t.done for t in tracks):
                        break
        except BaseException:
            for track in tracks:
                if track.writer is not None:
                    track.writer.abort()
            raise
        seconds = time.perf_counter() - started
        results = []
        for b, track in enumerate(tracks[: len(seeds)]):
            video = str(track.writer.close()) if track.writer is not None else None
            calls, failures = track.planning or (self.execution.planning_calls[b], self.execution.planning_failures[b])
            results.append(
                EpisodeResult(
                    seed=track.seed,
                    steps=track.steps,
                    first_success_step=dict(track.first),
                    planning_calls=int(calls),
                    planning_failures=int(failures),
                    video=video,
                    extra={
                        "env_index": b,
                        "policy_steps": track.policy_steps,
                        "seconds": seconds,
                        "video_frames": track.writer.frames if track.writer else None,
                        "action_digest": track.digest.hexdigest(),
                        "conditions": track.conditions.to_dict(),
                    },
                )
            )
        return results

    def close(self) -> None:
        """Close the env."""
        self.env.close()


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
    bar = tqdm(total=len(seeds), desc=f"{cfg.task} episodes", unit="ep", disable=not cfg.progress)
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
                for policy in policies:  # the server pads its batches to these sizes
                    policy.warmup(batch_sizes(workers))
                server = InferenceServer([p.model for p in policies], workers, ctx)
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
