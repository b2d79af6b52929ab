"""Shared batched inference: env worker processes send their chunk requests to one copy of each model.

With ``--inference shared`` (the default when the policies run on CUDA and ``--num-envs`` > 1 on the CPU
backend) every worker process keeps its env, router and each policy's observation history and action queue,
but the diffusion model is a :class:`~rf_dp_agents.rollout.client.RemoteModel`: when an env needs a new action
chunk, the worker sends the history (uint8 images, raw state) to the parent. There an :class:`InferenceServer`
thread takes every request that is waiting, runs each agent's model once on the stacked rows and sends each worker
its rows back; with ``overlap=True`` (``--overlap-agents``, the rollout default) different agents' calls run at the
same time, each on its model's CUDA stream. On a GPU this is what makes many envs cheap: DDPM-100 costs about the
same at batch 16 as at batch 1, while separate processes would take turns on the GPU one row at a time.

Batches are padded to the next power of two (at most the number of workers), so a CUDA-graphed model captures
a handful of graphs. With ``deterministic=True`` each row's initial noise comes from its policy's seed, as in a
worker's own model; otherwise each request carries seeds drawn from the worker's torch RNG, so a worker whose
RNG is seeded per episode gets the same noise whichever other requests share its model call.

Each worker has its own line to the server (a duplex pipe, one per reply slot), so a worker killed in the middle
of a request damages only its own line: the server drops it, and :meth:`InferenceServer.reset_slot` gives the
slot a fresh line for the restarted worker.
"""

from __future__ import annotations

import concurrent.futures as futures
import contextlib
import multiprocessing
import threading
import time
from multiprocessing.connection import Connection, wait
from typing import Any, Sequence

import numpy as np
import torch

from rf_dp_agents.rollout.calls import (
    Request,
    ServerStats,
    batch_sizes,
    lane_key,
    padded_size,
    prepare_for_overlap,
    runs_alone,
)

REQUEST_POLL_S = 0.1
"""How long the server thread waits for a request before checking whether it should stop."""
GATHER_S = 0.003
"""After the first request of a batch, how long the server waits for more before running the model."""


class InferenceServer:
    """Runs the models of every agent for requests from worker processes, in a thread of this process.

    ``models[i]`` serves agent i. Slot ``k``'s worker talks to the server over the line :meth:`line` gives
    (``InferenceClient(k, server.requests, server.replies)`` picks it; a worker may also claim the next free slot
    with :func:`claim_slot` on :attr:`slots`). Use as a context manager: the thread runs inside the ``with`` block.
    A failed model call is sent to the workers that asked (they raise it); the server goes on serving. A line
    whose worker died is dropped; :meth:`reset_slot` opens a new one for the slot's next worker.

    ``overlap``: different model objects' calls run at the same time, each in a thread and on the CUDA stream its
    model's graphs are captured on (``rollout.calls``); without it one call runs at a time, in the server thread.
    """

    def __init__(self, models: Sequence[Any], num_workers: int, ctx: Any, overlap: bool = False) -> None:
        if not models:
            raise ValueError("InferenceServer needs at least one model")
        self.models = list(models)
        self.num_workers = int(num_workers)
        self.overlap = bool(overlap)
        if self.overlap:
            for model in {id(m): m for m in self.models}.values():
                prepare_for_overlap(model)
        lanes: dict[Any, int] = {}
        self._lane_of = [lanes.setdefault(lane_key(m), len(lanes)) for m in self.models]
        """Agent -> lane: agents that share one model object (or one graph capture stream) share a lane, whose calls
        run one at a time."""
        self._pool: futures.ThreadPoolExecutor | None = None
        self._wake: tuple[Connection, Connection] | None = None
        """(reader, writer): a lane thread writes a byte when its call ends, which wakes the server thread."""
        self._reply_lock = threading.Lock()
        self.slots = ctx.Value("i", 0)
        self.stats = ServerStats()
        self._lock = threading.Lock()
        self._ends: list[Connection | None] = [None] * self.num_workers
        """The server's end of each slot's line (None once dropped)."""
        self._lines: list[Connection] = [None] * self.num_workers  # type: ignore[list-item]
        """The worker's end of each slot's line, until :meth:`release_worker_end`."""
        self._retired: list[Connection] = []
        for slot in range(self.num_workers):
            self.reset_slot(slot)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def requests(self) -> list[Connection]:
        """The workers' ends of the lines, by slot (requests go out and replies come back on the same line)."""
        return self._lines

    @property
    def replies(self) -> list[Connection]:
        """The same lines as :attr:`requests` (kept for the ``InferenceClient(slot, requests, replies)`` form)."""
        return self._lines

    def line(self, slot: int) -> Connection:
        """The worker's end of slot ``slot``'s line (pass it to the worker process when starting it)."""
        return self._lines[slot]

    def reset_slot(self, slot: int) -> Connection:
        """Open a fresh line for ``slot`` (its worker died): the old one is dropped with any reply still due on it;
        returns the new worker end."""
        server_end, worker_end = _pipe()
        with self._lock:
            old = self._ends[slot]
            if old is not None:
                self._retired.append(old)
            self._ends[slot] = server_end
            self._lines[slot] = worker_end
        return worker_end

    def release_worker_end(self, slot: int) -> None:
        """Close this process's copy of slot ``slot``'s worker end once the worker process holds its own, so the
        server sees the line close when that worker dies."""
        self._lines[slot].close()

    def __enter__(self) -> "InferenceServer":
        if self.overlap:
            self._wake = _pipe(duplex=False)
            self._pool = futures.ThreadPoolExecutor(max(self._lane_of) + 1, thread_name_prefix="inference-lane")
        self._thread = threading.Thread(target=self._serve, name="inference-server", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None
        if self._wake is not None:
            for end in self._wake:
                end.close()
            self._wake = None
        with self._lock:
            ends = [e for e in self._ends if e is not None] + self._retired + list(self._lines)
            self._ends, self._retired = [None] * self.num_workers, []
        for end in ends:
            end.close()

    # ------------------------------------------------------------------ the server thread
    def _receive(self, timeout: float) -> list[tuple[Connection, Request]]:
        """The requests that arrive on any live line within ``timeout`` seconds (each with the line it came on)."""
        with self._lock:
            for end in self._retired:
                end.close()
            self._retired = []
            live = [e for e in self._ends if e is not None]
        got: list[tuple[Connection, Request]] = []
        wake = None if self._wake is None else self._wake[0]
        if not live and wake is None:
            time.sleep(timeout)
            return got
        for end in wait(live + ([wake] if wake is not None else []), timeout=timeout):
            if end is wake:  # a lane's call ended: empty the wake line, no request in it
                while wake.poll():
                    wake.recv_bytes()
                continue
            try:
                got.append((end, end.recv()))  # type: ignore[union-attr]
            except (EOFError, OSError):  # its worker died (possibly mid-request): drop the line
                with self._lock:
                    self._ends = [None if e is end else e for e in self._ends]
                end.close()  # type: ignore[union-attr]
        return got

    def _serve(self) -> None:
        """Take every waiting request, run the agent whose oldest request waited longest on all of its requests,
        repeat: requests that arrive while a model runs join the next call for their agent."""
        if self.overlap:
            return self._serve_overlapped()
        pending: list[tuple[Connection, Request]] = []
        while not self._stop.is_set():
            self._collect(pending, REQUEST_POLL_S if not pending else 0.0)
            if not pending:
                continue
            group = pending[0][1].group  # the oldest request's agent and seeding
            chosen = [p for p in pending if p[1].group == group]
            pending = [p for p in pending if p[1].group != group]
            self._run(group[0], chosen)

    def _serve_overlapped(self) -> None:
        """As :meth:`_serve`, but every group whose lane is free starts at once in its lane's thread; a call that
        would build a graph waits until no call runs, and holds back the groups behind it meanwhile."""
        pending: list[tuple[Connection, Request]] = []
        running: dict[int, futures.Future] = {}
        while not self._stop.is_set():
            # what still waits needs a busy lane: sleep until a call ends (the wake line) or a request comes
            self._collect(pending, REQUEST_POLL_S if not pending or running else 0.0)
            for lane in [lane for lane, call in running.items() if call.done()]:
                del running[lane]
            pending = self._dispatch(pending, running)

    def _collect(self, pending: list[tuple[Connection, Request]], timeout: float) -> None:
        """Add the requests that arrive to ``pending``: wait up to ``timeout`` for the first ones; if they are the
        first of a round (``pending`` was empty), also those arriving within ``GATHER_S``, else those waiting."""
        was_empty = not pending
        pending.extend(self._receive(timeout))
        wait_until = time.perf_counter() + (GATHER_S if was_empty and pending else 0.0)
        while more := self._receive(max(wait_until - time.perf_counter(), 0.0)):
            pending.extend(more)

    def _dispatch(self, pending: list[tuple[Connection, Request]],
                  running: dict[int, futures.Future]) -> list[tuple[Connection, Request]]:
        """Start, oldest group first, every group whose lane is free; return the requests left waiting."""
        started: set[int] = set()
        held = False  # a call that must run alone is waiting: nothing behind it starts
        for group in dict.fromkeys(r.group for _, r in pending):
            agent, lane = group[0], self._lane_of[group[0]]
            if held or lane in running:
                continue
            chosen = [(end, r) for end, r in pending if r.group == group]
            rows = sum(r.rows for _, r in chosen)
            if runs_alone(self.models[agent], padded_size(rows, self.num_workers)):
                if running:
                    held = True
                    continue
                self._run(agent, chosen)  # in this thread, with no other call on the device
            else:
                assert self._pool is not None and self._wake is not None
                running[lane] = call = self._pool.submit(self._lane_call, agent, chosen)
                call.add_done_callback(self._wake_server)  # runs once the call counts as done
            started.update(id(r) for _, r in chosen)
        return [(end, r) for end, r in pending if id(r) not in started]

    def _lane_call(self, agent: int, asked: list[tuple[Connection, Request]]) -> None:
        """One call in its lane's thread, on the lane's CUDA stream: the graph capture stream of the agent's model
        (:func:`lane_key`), where it has one."""
        stream = getattr(self.models[agent], "graph_capture_stream", None)
        if stream is not None:  # after anything this thread's default stream still has queued
            stream.wait_stream(torch.cuda.current_stream(stream.device))
        with torch.cuda.stream(stream) if stream is not None else contextlib.nullcontext():
            self._run(agent, asked)

    def _wake_server(self, _call: futures.Future) -> None:
        """Wake the server thread (a lane's call ended)."""
        wake = self._wake
        if wake is not None:
            with contextlib.suppress(OSError, ValueError):
                wake[1].send_bytes(b"1")

    def _reply(self, end: Connection, message: tuple) -> None:
        try:
            with self._reply_lock:  # two lanes may answer the same worker's line at once
                end.send(message)
        except (OSError, ValueError):  # the worker died or its line was dropped: nobody waits for this reply
            pass

    def _run(self, agent: int, asked: list[tuple[Connection, Request]]) -> None:
        """Run agent ``agent``'s model on the rows of the requests ``asked``; reply to each on its line."""
        reqs = [r for _, r in asked]
        try:
            model = self.models[agent]
            keys = list(reqs[0].obs)
            counts = [r.rows for r in reqs]
            rows = sum(counts)
            size = padded_size(rows, self.num_workers)
            obs = {}
            for key in keys:
                stacked = np.concatenate([r.obs[key] for r in reqs], axis=0)
                if size > rows:
                    stacked = np.concatenate([stacked, np.repeat(stacked[:1], size - rows, axis=0)], axis=0)
                obs[key] = torch.from_numpy(stacked).to(model.device, non_blocking=True)
            generator = None
            if reqs[0].seeds is not None:
                seeds = [s for r, n in zip(reqs, counts) for s in (r.seeds if len(r.seeds) == n else r.seeds[:1] * n)]
                seeds += [seeds[0]] * (size - rows)
                generator = [torch.Generator().manual_seed(int(s)) for s in seeds]
            with self.stats.timed_call(rows, size), torch.no_grad():
                out = model.predict_action(obs, generator=generator)[:rows].float().cpu().numpy()
        except Exception as err:  # the workers raise it; the server keeps serving the others
            message = f"inference for agent {agent} failed in the parent process: {type(err).__name__}: {err}"
            for end, r in asked:
                self._reply(end, ("error", r.rid, message))
            return
        at = 0
        for (end, r), n in zip(asked, counts):
            self._reply(end, ("ok", r.rid, out[at : at + n]))
            at += n


def _pipe(duplex: bool = True) -> tuple[Connection, Connection]:
    """A pipe: (server end, worker end) when duplex, else (reader, writer)."""
    return multiprocessing.Pipe(duplex=duplex)


__all__ = [
    "InferenceServer",
    "Request",
    "ServerStats",
    "batch_sizes",
    "padded_size",
]
