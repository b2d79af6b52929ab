"""One env (possibly vectorised), its policies and router: :class:`EvalSession` runs batches of seeded episodes and
records, per episode, each success rule's first step, the other true/false flags' counts, the action digest and the
video. The rollout runner (:mod:`rf_dp_agents.rollout.runner`) drives sessions in this process or in workers.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import gymnasium as gym
import numpy as np
import torch

import envs.tasks  # noqa: F401  (registers the -rf tasks)
from envs.router import MultiAgentRouter, default_routes
from envs.tasks.base import GLOBAL_CAMERA
from rf_dp_agents.architecture import own_camera as agent_camera
from rf_dp_agents.policy import DiffusionPolicyAgent
from rf_dp_agents.rollout.agents import camera_size, load_agent_policies
from rf_dp_agents.rollout.config import RolloutConfig
from rf_dp_agents.rollout.execution import Execution, as_agent_actions, make_execution, to_env_action
from rf_dp_agents.rollout.metrics import ConditionCount, EpisodeResult, condition_flags
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
    frames_rendered: int = 0
    """Observations (the reset's included) whose policy cameras were rendered, not held (skip_unread_frames)."""


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
        self.policy_cameras = sorted(read)
        self.video_only_cameras = [cam for cam in self.cameras if cam not in read]
        """Cameras only videos show: paused in batches that record none (CPU backend)."""

    def _frame(self, obs: dict, b: int, step: int, track: _Track) -> np.ndarray:
        sensors = obs["sensor_data"]
        images = {cam: _np(sensors[cam]["rgb"][b]) for cam in self.cameras if cam in sensors}
        status = {rule: track.first[rule] is not None for rule in self.rules}
        return compose_frame(images, step, self.max_steps, status)

    def _hold_frames(self, obs: dict, last: dict[str, Any], tracks: Sequence[_Track]) -> None:
        """Fill the policy cameras this observation did not render with their last frame (which no model reads),
        keep the rendered ones as the last, and count the steps whose policy cameras were all rendered."""
        sensors = obs["sensor_data"]
        rendered = all(cam in sensors for cam in self.policy_cameras)
        for cam in self.policy_cameras:
            if cam in sensors:
                last[cam] = sensors[cam]
            else:
                sensors[cam] = last[cam]
        for track in tracks:
            track.frames_rendered += int(rendered and not track.done)

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
        pausable = hasattr(self.env.unwrapped, "pause_cameras")
        base_paused = [] if any(recorded) else self.video_only_cameras
        if pausable:
            self.env.unwrapped.pause_cameras(base_paused)
        skip = pausable and self.cfg.skip_unread_frames and not any(recorded)
        last_frames: dict[str, Any] = {}
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
        self._hold_frames(obs, last_frames, tracks)
        episode_start = np.ones(n, dtype=bool)
        step = 0
        try:
            while step < self.max_steps and not all(t.done for t in tracks):
                action = self.router.act(obs, episode_start=episode_start, deterministic=self.cfg.deterministic)
                episode_start = np.zeros(n, dtype=bool)
                for track in tracks:
                    track.policy_steps += 0 if track.done else 1
                if skip:  # the next frame of a camera no model reads is not rendered
                    read = self.router.cameras_read_next()
                    self.env.unwrapped.pause_cameras([*base_paused, *(c for c in self.policy_cameras if c not in read)])
                for env_action in self.execution.expand(as_agent_actions(action, self.keys)):
                    obs, _, _, _, info = self.env.step(to_env_action(env_action, self.multi_agent))
                    step += 1
                    self._hold_frames(obs, last_frames, tracks)
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
        finally:
            if pausable:
                self.env.unwrapped.pause_cameras(base_paused)
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
                        "policy_frames_rendered": track.frames_rendered,
                        "conditions": track.conditions.to_dict(),
                    },
                )
            )
        return results

    def close(self) -> None:
        """Close the env."""
        self.env.close()


__all__ = ["EvalSession", "PRIMARY_RULE", "build_router", "episode_cap", "make_env", "success_rules"]
