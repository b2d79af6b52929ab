"""Shared batched inference: env worker processes send their chunk requests to one copy of each model.

With ``--inference shared`` (the default when the policies run on CUDA and ``--num-envs`` > 1 on the CPU
backend) every worker process keeps its env, router and each policy's observation history and action queue,
but the diffusion model is a :class:`RemoteModel`: when an env needs a new action chunk, the worker sends the
history (uint8 images, raw state) to the parent. There an :class:`InferenceServer` thread takes every request
that is waiting, runs each agent's model once on the stacked rows and sends each worker its rows back.
On a GPU this is what makes many envs cheap: DDPM-100 costs about the same at batch 16 as at batch 1, while
separate processes would take turns on the GPU one row at a time.

Batches are padded to the next power of two (at most the number of workers), so a CUDA-graphed model captures
a handful of graphs. With ``deterministic=True`` each row's initial noise comes from its policy's seed, as in a
worker's own model.
"""

from __future__ import annotations

import queue
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, NamedTuple, Sequence

import numpy as np
import torch

from rf_dp_agents.config import ModelConfig

REQUEST_POLL_S = 0.1
"""How long the server thread waits for a request before checking whether it should stop."""
GATHER_S = 0.003
"""After the first request of a batch, how long the server waits for more before running the model."""
REPLY_TIMEOUT_S = 900.0
"""A worker gives up on a request after this long without a reply (the parent died or hangs)."""


def batch_sizes(max_rows: int) -> list[int]:
    """The padded batch sizes used for up to ``max_rows`` rows: powers of two below it, then ``max_rows``."""
    if max_rows <= 0:
        raise ValueError(f"max_rows must be positive, got {max_rows}")
    sizes, size = [], 1
    while size < max_rows:
        sizes.append(size)
        size *= 2
    return sizes + [max_rows]


def padded_size(rows: int, max_rows: int) -> int:
    """The smallest entry of :func:`batch_sizes` that holds ``rows`` (``rows`` itself above ``max_rows``)."""
    for size in batch_sizes(max_rows):
        if size >= rows:
            return size
    return rows


class Request(NamedTuple):
    """One worker's chunk request: its reply slot, the request id, the agent, the observation rows, the seeds."""

    slot: int
    rid: int
    agent: int
    obs: dict[str, np.ndarray]
    seeds: list[int] | None

    @property
    def group(self) -> tuple[int, bool]:
        """Requests of one group share a model call: same agent, and seeded or not."""
        return self.agent, self.seeds is not None


@dataclass
class ServerStats:
    """What the server did: model calls, rows served, rows added as padding, seconds inside the models."""

    batches: int = 0
    rows: int = 0
    padded_rows: int = 0
    model_seconds: float = 0.0
    rows_per_batch: dict[int, int] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-serialisable summary."""
        return {
            "batches": self.batches,
            "rows": self.rows,
            "padded_rows": self.padded_rows,
            "mean_rows_per_batch": self.rows / self.batches if self.batches else None,
            "model_seconds": self.model_seconds,
            "batches_by_rows": {str(k): v for k, v in sorted(self.rows_per_batch.items())},
        }


class InferenceServer:
    """Runs the models of every agent for requests from worker processes, in a thread of this process.

    ``models[i]`` serves agent i. Give the workers :attr:`requests`, :attr:`replies` and :attr:`slots`
    (multiprocessing objects of ``ctx``); each worker claims a reply slot with :func:`claim_slot`.
    Use as a context manager: the thread runs inside the ``with`` block. A failed model call is sent to the
    workers that asked (they raise it); the server goes on serving.
    """

    def __init__(self, models: Sequence[Any], num_workers: int, ctx: Any) -> None:
        if not models:
            raise ValueError("InferenceServer needs at least one model")
        self.models = list(models)
        self.num_workers = int(num_workers)
        self.requests = ctx.Queue()
        self.replies = [ctx.Queue() for _ in range(self.num_workers)]
        self.slots = ctx.Value("i", 0)
        self.stats = ServerStats()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> "InferenceServer":
        self._thread = threading.Thread(target=self._serve, name="inference-server", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
        for q in (self.requests, *self.replies):
            q.close()
            q.cancel_join_thread()

    # ------------------------------------------------------------------ the server thread
    def _serve(self) -> None:
        """Take every waiting request, run the agent whose oldest request waited longest on all of its requests,
        repeat: requests that arrive while a model runs join the next call for their agent."""
        pending: list[Request] = []
        while not self._stop.is_set():
            if not pending:
                try:
                    pending.append(self.requests.get(timeout=REQUEST_POLL_S))
                except queue.Empty:
                    continue
                except (EOFError, OSError):  # the queue was closed under us: the run is over
                    return
                wait_until = time.perf_counter() + GATHER_S
            else:
                wait_until = time.perf_counter()
            while True:
                try:
                    pending.append(self.requests.get(timeout=max(wait_until - time.perf_counter(), 0.0)))
                except queue.Empty:
                    break
                except (EOFError, OSError):
                    return
            group = pending[0].group  # the oldest request's agent and seeding
            chosen = [r for r in pending if r.group == group]
            pending = [r for r in pending if r.group != group]
            self._run(group[0], chosen)

    def _run(self, agent: int, reqs: list[Request]) -> None:
        """Run agent ``agent``'s model on the rows of ``reqs``; reply to each request's slot."""
        try:
            model = self.models[agent]
            keys = list(reqs[0].obs)
            counts = [len(r.obs[keys[0]]) for r in reqs]
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
            start = time.perf_counter()
            with torch.no_grad():
                out = model.predict_action(obs, generator=generator)[:rows].float().cpu().numpy()
            stats = self.stats
            stats.model_seconds += time.perf_counter() - start
            stats.batches += 1
            stats.rows += rows
            stats.padded_rows += size - rows
            stats.rows_per_batch[rows] = stats.rows_per_batch.get(rows, 0) + 1
        except Exception as err:  # the workers raise it; the server keeps serving the others
            message = f"inference for agent {agent} failed in the parent process: {type(err).__name__}: {err}"
            for r in reqs:
                self.replies[r.slot].put(("error", r.rid, message))
            return
        at = 0
        for r, n in zip(reqs, counts):
            self.replies[r.slot].put(("ok", r.rid, out[at : at + n]))
            at += n


def claim_slot(slots: Any) -> int:
    """A worker's own reply slot: 0, 1, ... in the order workers start."""
    with slots.get_lock():
        slot = int(slots.value)
        slots.value += 1
    return slot


class InferenceClient:
    """A worker's line to the server: sends requests tagged with an id, sorts the replies back to them.

    Several requests may be in flight at once (one per agent, say); replies can come back in any order.
    """

    def __init__(self, slot: int, requests: Any, replies: Any) -> None:
        self.slot = int(slot)
        self._requests, self._replies = requests, replies[self.slot]
        self._next_id = 0
        self._arrived: dict[int, tuple[str, Any]] = {}

    def submit(self, agent: int, obs: Mapping[str, np.ndarray], seeds: list[int] | None) -> int:
        """Send one request for agent ``agent``; returns its id for :meth:`result`."""
        rid = self._next_id
        self._next_id += 1
        self._requests.put(Request(self.slot, rid, int(agent), dict(obs), seeds))
        return rid

    def result(self, rid: int) -> np.ndarray:
        """Wait for request ``rid``'s rows (keeping any other reply that arrives first)."""
        while rid not in self._arrived:
            try:
                status, got, value = self._replies.get(timeout=REPLY_TIMEOUT_S)
            except queue.Empty:
                raise RuntimeError(
                    f"worker slot {self.slot}: no reply from the inference server in {REPLY_TIMEOUT_S:.0f} s"
                ) from None
            self._arrived[got] = (status, value)
        status, value = self._arrived.pop(rid)
        if status != "ok":
            raise RuntimeError(value)
        return value


class RemoteModel:
    """Stands in for a ``DiffusionPolicy`` inside a worker: its chunks are sampled by the parent's server.

    It holds the model's configuration only (no weights); ``DiffusionPolicyAgent`` keeps the observation
    history and the action queue in the worker as usual, and uses :meth:`submit_action` so that the requests
    of all agents are in flight together.
    """

    training = False

    def __init__(self, config: ModelConfig, agent: int, client: InferenceClient) -> None:
        self.config = config
        self.agent = int(agent)
        self.client = client

    @property
    def device(self) -> torch.device:
        """The worker side lives on the CPU."""
        return torch.device("cpu")

    def eval(self) -> "RemoteModel":
        """No-op (the parent's model is already in eval mode); returns self."""
        return self

    def submit_action(self, obs: Mapping[str, torch.Tensor], generator: Any = None) -> Callable[[], torch.Tensor]:
        """Send the request; the returned call waits for the raw action chunks ``(B, T, A)``."""
        seeds = None
        if generator is not None:
            gens = list(generator) if isinstance(generator, Sequence) else [generator]
            seeds = [int(g.initial_seed()) for g in gens]
        payload = {key: value.detach().cpu().numpy() for key, value in obs.items()}
        rid = self.client.submit(self.agent, payload, seeds)
        return lambda: torch.from_numpy(self.client.result(rid))

    def predict_action(
        self, obs: Mapping[str, torch.Tensor], generator: Any = None, num_inference_steps: int | None = None
    ) -> torch.Tensor:
        """Raw action chunks ``(B, T, A)`` for raw observations, sampled by the parent's model."""
        if num_inference_steps is not None:
            raise ValueError("a shared-inference model uses the sampler settings the parent loaded it with")
        return self.submit_action(obs, generator)()


__all__ = [
    "InferenceClient",
    "InferenceServer",
    "RemoteModel",
    "Request",
    "ServerStats",
    "batch_sizes",
    "claim_slot",
    "padded_size",
]
