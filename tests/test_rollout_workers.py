"""Env worker pool: a worker that dies (SIGKILL) is reported, restarted and its episode retried once; a second
death on the same seed marks it failed; with shared inference the restarted worker gets a fresh line.

The workers are real spawned processes; their sessions are small stand-ins (no simulator) so that a worker can
be made to die at an exact point of an episode.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from rf_dp_agents.rollout.client import InferenceClient
from rf_dp_agents.rollout.inference import InferenceServer
from rf_dp_agents.rollout.metrics import EpisodeResult
from rf_dp_agents.rollout.workers import WorkerPool, set_session, time_limit


class _DyingSession:
    """Runs seed s as an episode of s steps; dies by SIGKILL on the seeds listed, once per marker file absent."""

    def __init__(self, marks: str, die_once: tuple[int, ...], die_always: tuple[int, ...], client=None) -> None:
        self.marks, self.die_once, self.die_always, self.client = Path(marks), die_once, die_always, client

    def run_batch(self, seeds):
        seed = int(seeds[0])
        value = None
        if self.client is not None:  # one request to the parent's model, answered before any death below
            rid = self.client.submit(0, {"x": np.full((1, 2), float(seed), np.float32)}, [seed])
            value = float(self.client.result(rid).sum())
        mark = self.marks / f"died-{seed}"
        if seed in self.die_always or (seed in self.die_once and not mark.exists()):
            mark.touch()
            if self.client is not None:  # a request in flight when the worker dies: its reply has no reader
                self.client.submit(0, {"x": np.zeros((1, 2), np.float32)}, [seed])
            os.kill(os.getpid(), signal.SIGKILL)
        return [EpisodeResult(seed=seed, steps=seed, first_success_step={"success": None}, extra={"value": value})]


def _init(marks: str, die_once: tuple, die_always: tuple) -> None:
    set_session(_DyingSession(marks, die_once, die_always))


def _init_remote(marks: str, die_once: tuple, slot: int, line) -> None:
    set_session(_DyingSession(marks, die_once, (), InferenceClient(slot, line)))


def _init_dies() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


class _Doubler:
    """A model stand-in for the inference server: the chunk is twice the input rows."""

    device = torch.device("cpu")

    def predict_action(self, obs, generator=None):
        return obs["x"] * 2.0


def test_stop_starts_no_further_seed_and_the_seeds_run_are_the_first(tmp_path: Path) -> None:
    """Once stop() is true (here: after the first result) no seed is started; the two under way finish."""
    ctx = multiprocessing.get_context("spawn")
    pool = WorkerPool(ctx, 2, _init, lambda slot: (str(tmp_path), (), ()))
    got: list[EpisodeResult] = []
    failed = pool.run(range(8), got.append, stop=lambda: len(got) >= 1)
    assert sorted(r.seed for r in got) == [0, 1] and failed == {}
    assert all(w is None for w in pool.workers)


def test_time_limit_starts_its_clock_at_the_first_call() -> None:
    assert time_limit(None) is None
    stop = time_limit(0.5 / 60)  # half a second, counted from the first call, not from its making
    time.sleep(0.6)
    assert stop() is False
    time.sleep(0.6)
    assert stop() is True


def test_killed_worker_is_restarted_and_its_episode_retried(tmp_path: Path, capfd) -> None:
    ctx = multiprocessing.get_context("spawn")
    pool = WorkerPool(ctx, 2, _init, lambda slot: (str(tmp_path), (2,), (3,)))
    got: list[EpisodeResult] = []
    failed = pool.run(range(6), got.append)
    assert sorted(r.seed for r in got) == [0, 1, 2, 4, 5]
    assert all(r.steps == r.seed for r in got)
    assert failed == {3: "the env worker killed by SIGKILL on each of 2 tries"}
    deaths = sorted((d.seed, d.attempt, d.retried, d.cause) for d in pool.deaths)
    assert deaths == [(2, 1, True, "killed by SIGKILL"), (3, 1, True, "killed by SIGKILL"), (3, 2, False, "killed by SIGKILL")]
    err = capfd.readouterr().err
    assert "killed by SIGKILL while running seed 2; restarting it and retrying the episode" in err
    assert "seed 3; the episode is recorded as failed after 2 tries" in err
    assert all(w is None for w in pool.workers)  # every process stopped


def test_worker_that_dies_while_starting_stops_the_pool() -> None:
    pool = WorkerPool(multiprocessing.get_context("spawn"), 1, _init_dies, lambda slot: ())
    with pytest.raises(RuntimeError, match="env worker 0 .* killed by SIGKILL while starting, 2 times in a row"):
        pool.run([0, 1], lambda r: None)


def test_restarted_worker_gets_a_fresh_line_to_the_inference_server(tmp_path: Path) -> None:
    ctx = multiprocessing.get_context("spawn")
    server = InferenceServer([_Doubler()], 2, ctx)

    def args(slot: int) -> tuple:
        return (str(tmp_path), (1, 3), slot, server.reset_slot(slot))

    got: list[EpisodeResult] = []
    with server:
        pool = WorkerPool(ctx, 2, _init_remote, args, server.release_worker_end)
        failed = pool.run(range(5), got.append)
    assert failed == {} and sorted(d.seed for d in pool.deaths) == [1, 3]
    # every episode got its own rows back (2 * seed per entry of a (1, 2) row), also after the restarts
    assert {r.seed: r.extra["value"] for r in got} == {s: 4.0 * s for s in range(5)}
