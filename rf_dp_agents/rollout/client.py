"""The worker side of shared inference: a worker's line to the :class:`~rf_dp_agents.rollout.inference.InferenceServer`
and the model stand-in that uses it.

* :func:`claim_slot`: a worker's own reply slot, in the order workers start.
* :class:`InferenceClient`: sends requests tagged with an id over the slot's line and sorts the replies back to them.
* :class:`RemoteModel`: stands in for a ``DiffusionPolicy`` inside a worker (configuration only, no weights); its
  chunks are sampled by the parent's server.
"""

from __future__ import annotations

from multiprocessing.connection import Connection
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch

from rf_dp_agents.config import ModelConfig
from rf_dp_agents.rollout.calls import Request

REPLY_TIMEOUT_S = 900.0
"""A worker gives up on a request after this long without a reply (the parent died or hangs)."""


def claim_slot(slots: Any) -> int:
    """A worker's own reply slot: 0, 1, ... in the order workers start."""
    with slots.get_lock():
        slot = int(slots.value)
        slots.value += 1
    return slot


class InferenceClient:
    """A worker's line to the server: sends requests tagged with an id, sorts the replies back to them.

    ``requests`` is the slot's line, or the list of every slot's lines (:attr:`InferenceServer.requests`);
    ``replies`` is accepted for the older three-argument form and must be the same lines. Several requests may
    be in flight at once (one per agent, say); replies can come back in any order.
    """

    def __init__(self, slot: int, requests: Connection | Sequence[Connection], replies: Any = None) -> None:
        self.slot = int(slot)
        self._line: Connection = requests[self.slot] if isinstance(requests, Sequence) else requests
        self._next_id = 0
        self._arrived: dict[int, tuple[str, Any]] = {}

    def submit(self, agent: int, obs: Mapping[str, np.ndarray], seeds: list[int] | None) -> int:
        """Send one request for agent ``agent``; returns its id for :meth:`result`."""
        rid = self._next_id
        self._next_id += 1
        try:
            self._line.send(Request(self.slot, rid, int(agent), dict(obs), seeds))
        except OSError as err:
            raise RuntimeError(f"worker slot {self.slot}: the inference server's line is closed ({err})") from None
        return rid

    def result(self, rid: int) -> np.ndarray:
        """Wait for request ``rid``'s rows (keeping any other reply that arrives first)."""
        while rid not in self._arrived:
            try:
                if not self._line.poll(REPLY_TIMEOUT_S):
                    raise RuntimeError(
                        f"worker slot {self.slot}: no reply from the inference server in {REPLY_TIMEOUT_S:.0f} s"
                    )
                status, got, value = self._line.recv()
            except (EOFError, OSError):
                raise RuntimeError(
                    f"worker slot {self.slot}: the inference server closed the line (its process ended)"
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
        """Send the request; the returned call waits for the raw action chunks ``(B, T, A)``.

        Without ``generator``, each row's noise seed is drawn from this process's torch RNG."""
        if generator is not None:
            gens = list(generator) if isinstance(generator, Sequence) else [generator]
            seeds = [int(g.initial_seed()) for g in gens]
        else:
            rows = len(next(iter(obs.values())))
            seeds = [int(s) for s in torch.randint(0, 2**62, (rows,), dtype=torch.int64)]
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


__all__ = ["InferenceClient", "RemoteModel", "claim_slot"]
