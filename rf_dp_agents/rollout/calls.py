"""The shared inference server's model calls: requests, padded batch sizes, which calls may run side by side,
and the statistics of the calls (``rollout.inference`` runs them).

With ``overlap`` the server runs different models' calls at the same time, each in a thread of its own on a CUDA
stream of its own (one lane per model object, so agents sharing one model take turns). A call that would build a
sampling graph (compile and capture) runs alone: the capture must see no other work on the device, so the server
waits for the running calls to end and starts no other call until it is done.
"""

from __future__ import annotations

import contextlib
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Iterator, NamedTuple

import numpy as np
import torch


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
    def rows(self) -> int:
        """Observation rows (envs) in this request."""
        return len(next(iter(self.obs.values())))

    @property
    def group(self) -> tuple[int, bool]:
        """Requests of one group share a model call: same agent, and seeded or not."""
        return self.agent, self.seeds is not None


def runs_alone(model: Any, size: int) -> bool:
    """Whether a call of ``model`` at padded batch ``size`` would build a CUDA sampling graph (it then runs with
    no other call on the device): ``model.would_build_graph(size)``; a model without that method never does."""
    would_build = getattr(model, "would_build_graph", None)
    return bool(would_build(size)) if would_build is not None else False


def prepare_for_overlap(model: Any) -> None:
    """Set up a model whose sampling graphs will replay while other models' do: graphs of a generator of their own
    (the default CUDA generator's state would be shared) captured on a stream of the model's own (a graph keeps
    its capture stream's cuBLAS workspace). Graphs built before are rebuilt at their next use."""
    if hasattr(model, "own_graph_generators"):
        model.own_graph_generators = True
    device = getattr(model, "device", None)
    if hasattr(model, "graph_capture_stream") and getattr(device, "type", None) == "cuda":
        if model.graph_capture_stream is None:
            model.graph_capture_stream = torch.cuda.Stream(device=device)


def lane_key(model: Any) -> Any:
    """What decides a model's lane: its graph capture stream where it has one (two models whose graphs share a
    capture stream share its cuBLAS workspace, so their calls must not overlap), else the model object."""
    stream = getattr(model, "graph_capture_stream", None)
    return ("stream", stream.cuda_stream) if stream is not None else ("model", id(model))


@dataclass
class ServerStats:
    """What the server did: model calls, rows served, rows added as padding, seconds inside the models (summed
    over calls), seconds with at least one call running, and the most calls running at once."""

    batches: int = 0
    rows: int = 0
    padded_rows: int = 0
    model_seconds: float = 0.0
    rows_per_batch: dict[int, int] = field(default_factory=dict)
    busy_seconds: float = 0.0
    max_concurrent_calls: int = 0
    _running: int = 0
    _busy_since: float = 0.0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @contextlib.contextmanager
    def timed_call(self, rows: int, padded: int) -> Iterator[None]:
        """Count the ``with`` block as a running model call of ``rows`` rows padded to ``padded``; a call that
        raises adds to the busy time only."""
        started = time.perf_counter()
        with self._lock:
            if self._running == 0:
                self._busy_since = started
            self._running += 1
            self.max_concurrent_calls = max(self.max_concurrent_calls, self._running)
        ok = False
        try:
            yield
            ok = True
        finally:
            now = time.perf_counter()
            with self._lock:
                self._running -= 1
                if self._running == 0:
                    self.busy_seconds += now - self._busy_since
                if ok:
                    self.model_seconds += now - started
                    self.batches += 1
                    self.rows += rows
                    self.padded_rows += padded - rows
                    self.rows_per_batch[rows] = self.rows_per_batch.get(rows, 0) + 1

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-serialisable summary."""
        with self._lock:
            return {
                "batches": self.batches,
                "rows": self.rows,
                "padded_rows": self.padded_rows,
                "mean_rows_per_batch": self.rows / self.batches if self.batches else None,
                "model_seconds": self.model_seconds,
                "busy_seconds": self.busy_seconds,
                "max_concurrent_calls": self.max_concurrent_calls,
                "batches_by_rows": {str(k): v for k, v in sorted(self.rows_per_batch.items())},
            }


__all__ = ["Request", "ServerStats", "batch_sizes", "lane_key", "padded_size", "prepare_for_overlap", "runs_alone"]
