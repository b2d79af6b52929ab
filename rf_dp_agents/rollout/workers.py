"""Env worker processes of a CPU-backend rollout: one episode at a time each, restarted when one dies.

:class:`WorkerPool` starts ``size`` spawned processes, each set up by ``init(*initargs(slot))`` and then
running :func:`run_episode` on the seeds it is sent over its own pipe. Results come back as
:class:`~rf_dp_agents.rollout.metrics.EpisodeResult` dicts. A worker that dies (segfault, out of memory,
SIGKILL) is reported with its seed, replaced by a fresh process on the same slot, and its episode is tried
once more; a second death on the same seed marks that seed failed and the rollout goes on with the others.
A death while a worker starts (before it is ready) costs its seed no try, but two in a row on one slot stop
the rollout. A Python exception inside an episode is a bug, not a death: it stops the rollout with the
worker's traceback.
"""

from __future__ import annotations

import signal
import sys
import time
import traceback
from collections import deque
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait
from typing import Any, Callable, Sequence

from rf_dp_agents.rollout.metrics import EpisodeResult

EPISODE_TRIES = 2
"""How many times one seed is started before a worker death on it marks it failed."""
STOP_TIMEOUT_S = 30.0
"""How long a worker may take to exit after being told to stop, before it is killed."""

_SESSION: Any = None
"""The worker process's evaluation session (set by the pool's ``init``)."""


def set_session(session: Any) -> None:
    """Install the session whose ``run_batch([seed])`` runs this worker's episodes (called by ``init``)."""
    global _SESSION
    _SESSION = session


def run_episode(seed: int) -> EpisodeResult:
    """Run one episode of ``seed`` in this worker's session."""
    if _SESSION is None:
        raise RuntimeError("the env worker was not initialised")
    return _SESSION.run_batch([seed])[0]


def _worker_main(line: Connection, init: Callable[..., None], initargs: tuple) -> None:
    """A worker process: set up, then run each seed received on ``line`` until told to stop or the line closes."""
    try:
        init(*initargs)
    except BaseException:  # noqa: BLE001  (reported to the parent, which stops the rollout)
        line.send(("init-error", None, traceback.format_exc()))
        return
    line.send(("ready", None, None))
    while True:
        try:
            seed = line.recv()
        except (EOFError, OSError):  # the parent is gone
            return
        if seed is None:
            return
        try:
            message: tuple = ("ok", seed, run_episode(int(seed)).to_dict())
        except BaseException:  # noqa: BLE001
            message = ("error", seed, traceback.format_exc())
        try:
            line.send(message)
        except OSError:
            return


def time_limit(minutes: float | None) -> Callable[[], bool] | None:
    """A ``stop`` for :meth:`WorkerPool.run`: true once ``minutes`` have passed since its first call (the first
    seed handed out); None without a limit."""
    if minutes is None:
        return None
    deadline: list[float] = []

    def stop() -> bool:
        if not deadline:
            deadline.append(time.monotonic() + 60.0 * float(minutes))
        return time.monotonic() >= deadline[0]

    return stop


def death_cause(exitcode: int | None) -> str:
    """Words for a worker's exit code: the signal that killed it, or the status it exited with."""
    if exitcode is not None and exitcode < 0:
        try:
            return f"killed by {signal.Signals(-exitcode).name}"
        except ValueError:
            return f"killed by signal {-exitcode}"
    return f"exited with status {exitcode}"


@dataclass
class WorkerDeath:
    """One worker death: the seed it was running, how it ended, which try of that seed it was."""

    seed: int
    slot: int
    pid: int | None
    cause: str
    attempt: int
    retried: bool

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-serialisable dict."""
        return dict(seed=self.seed, slot=self.slot, pid=self.pid, cause=self.cause, attempt=self.attempt,
                    retried=self.retried)


@dataclass
class _Worker:
    process: Any
    line: Connection
    seed: int | None = None
    ready: bool = False


class WorkerPool:
    """Spawned env workers that run seeds one at a time and are restarted when they die.

    ``initargs(slot)`` gives the arguments of ``init`` for the worker on ``slot``; it is called again for each
    restart (shared inference opens the slot a fresh line there). ``on_start(slot)`` runs after each worker
    process started (shared inference closes its copy of the worker's line there).
    """

    def __init__(
        self,
        ctx: Any,
        size: int,
        init: Callable[..., None],
        initargs: Callable[[int], tuple],
        on_start: Callable[[int], None] | None = None,
    ) -> None:
        self.ctx, self.size, self.init, self.initargs, self.on_start = ctx, int(size), init, initargs, on_start
        self.workers: list[_Worker | None] = [None] * self.size
        self.deaths: list[WorkerDeath] = []
        self._start_deaths = [0] * self.size

    def _start(self, slot: int) -> _Worker:
        mine, theirs = self.ctx.Pipe(duplex=True)
        process = self.ctx.Process(
            target=_worker_main, args=(theirs, self.init, self.initargs(slot)), name=f"env-worker-{slot}", daemon=True
        )
        process.start()
        theirs.close()
        if self.on_start is not None:
            self.on_start(slot)
        worker = _Worker(process, mine)
        self.workers[slot] = worker
        return worker

    def run(
        self,
        seeds: Sequence[int],
        on_result: Callable[[EpisodeResult], None],
        on_death: Callable[[WorkerDeath], None] | None = None,
        stop: Callable[[], bool] | None = None,
    ) -> dict[int, str]:
        """Run every seed; ``on_result`` gets each finished episode as it arrives. Returns the seeds that failed
        (a worker died on them twice), each with the reason. Once ``stop()`` is true no further seed is started
        (the episodes under way finish), so the seeds run are the first ones of ``seeds``."""
        todo = deque(int(s) for s in seeds)
        tries: dict[int, int] = {}
        failed: dict[int, str] = {}
        try:
            for slot in range(min(self.size, len(todo))):
                self._start(slot)
            while True:
                lost: list[int] = []
                if todo and stop is not None and stop():
                    todo.clear()
                for slot, worker in enumerate(self.workers):
                    if worker is not None and worker.seed is None and todo:
                        worker.seed = todo.popleft()
                        tries[worker.seed] = tries.get(worker.seed, 0) + 1
                        try:
                            worker.line.send(worker.seed)
                        except OSError:  # it died while idle
                            lost.append(slot)
                busy = [(slot, w) for slot, w in enumerate(self.workers) if w is not None and w.seed is not None]
                if not busy:
                    break
                ready = set(wait([w.line for _, w in busy] + [w.process.sentinel for _, w in busy])) if not lost else set()
                for slot, worker in busy:
                    dead = slot in lost
                    if worker.line in ready or worker.process.sentinel in ready:
                        dead = not self._collect(slot, worker, on_result) or not worker.process.is_alive()
                    if dead and worker.seed is not None:
                        death = self._died(slot, worker, tries, failed)
                        if on_death is not None:
                            on_death(death)
                        if death.retried:
                            todo.appendleft(death.seed)
                        if todo:
                            self._start(slot)
                    elif dead:  # exited right after sending its result: replace it if work is left
                        self._retire(slot, worker)
                        if todo:
                            self._start(slot)
        finally:
            self.close()
        return failed

    def _collect(self, slot: int, worker: _Worker, on_result: Callable[[EpisodeResult], None]) -> bool:
        """Take the message a worker sent, if any (an episode result, or an error that stops the rollout);
        False when its line is closed (the worker died)."""
        try:
            if not worker.line.poll():
                return True
            status, seed, value = worker.line.recv()
        except (EOFError, OSError):
            return False
        if status == "ready":
            worker.ready = True
            self._start_deaths[slot] = 0
            return self._collect(slot, worker, on_result)
        if status == "ok":
            worker.seed = None
            on_result(EpisodeResult(**value))
            return True
        where = "setting up" if status == "init-error" else f"running seed {seed}"
        raise RuntimeError(f"env worker {slot} failed while {where}:\n{value}")

    def _retire(self, slot: int, worker: _Worker) -> None:
        worker.process.join(timeout=STOP_TIMEOUT_S)
        if worker.process.is_alive():
            worker.process.kill()
            worker.process.join(timeout=STOP_TIMEOUT_S)
        worker.line.close()
        self.workers[slot] = None

    def _died(self, slot: int, worker: _Worker, tries: dict[int, int], failed: dict[int, str]) -> WorkerDeath:
        seed = int(worker.seed)  # type: ignore[arg-type]
        self._retire(slot, worker)
        cause = death_cause(worker.process.exitcode)
        if not worker.ready:  # died while starting: the episode never began
            self._start_deaths[slot] += 1
            if self._start_deaths[slot] >= EPISODE_TRIES:
                raise RuntimeError(
                    f"env worker {slot} (pid {worker.process.pid}) {cause} while starting, "
                    f"{self._start_deaths[slot]} times in a row (see its output above)"
                )
            tries[seed] -= 1
        attempt = tries[seed]
        retried = attempt < EPISODE_TRIES
        death = WorkerDeath(seed, slot, worker.process.pid, cause, attempt, retried)
        self.deaths.append(death)
        action = "restarting it and retrying the episode" if retried else (
            f"the episode is recorded as failed after {attempt} tries")
        doing = f"running seed {seed}" if worker.ready else f"starting (seed {seed} was next)"
        print(f"env worker {slot} (pid {worker.process.pid}) {cause} while {doing}; {action}",
              file=sys.stderr, flush=True)
        if not retried:
            failed[seed] = f"the env worker {cause} on each of {attempt} tries"
        return death

    def close(self) -> None:
        """Tell every worker to stop, wait for it (kill it after :data:`STOP_TIMEOUT_S`)."""
        for worker in self.workers:
            if worker is None:
                continue
            try:
                worker.line.send(None)
            except (OSError, ValueError):
                pass
        for slot, worker in enumerate(self.workers):
            if worker is None:
                continue
            worker.process.join(timeout=STOP_TIMEOUT_S if worker.seed is None else 0.0)
            if worker.process.is_alive():
                worker.process.kill()
                worker.process.join(timeout=STOP_TIMEOUT_S)
            worker.line.close()
            self.workers[slot] = None


__all__ = ["EPISODE_TRIES", "WorkerDeath", "WorkerPool", "death_cause", "run_episode", "set_session", "time_limit"]
