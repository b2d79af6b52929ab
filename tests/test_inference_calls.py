"""Which shared-inference calls run side by side (``rollout.calls`` and ``InferenceServer(overlap=True)``).

Pure scheduling tests: the models are tiny stand-ins that record when they run and can block, so the tests
see the order of the calls; a real model's rows through the overlapped server are checked in
``test_shared_inference.py``.
"""

from __future__ import annotations

import multiprocessing
import threading
import time
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from rf_dp_agents.config import tiny_model_config
from rf_dp_agents.model import DiffusionPolicy
from rf_dp_agents.rollout.calls import Request, ServerStats, lane_key, runs_alone
from rf_dp_agents.rollout.client import InferenceClient, claim_slot
from rf_dp_agents.rollout.inference import InferenceServer

CHUNK = (4, 2)  # (T, A) of the stand-ins' chunks


class StandIn:
    """A model stand-in on the CPU: logs '<name> start' / '<name> end', optionally waits on a barrier or an event,
    and answers rows filled with its ``value``. ``needs_graph`` makes its first call one that must run alone."""

    def __init__(self, name: str, log: list[str], value: float, wait=None, needs_graph: bool = False) -> None:
        self.name, self.log, self.value, self.wait = name, log, value, wait
        self.device = torch.device("cpu")
        self.built = not needs_graph

    def would_build_graph(self, size: int) -> bool:
        return not self.built

    def predict_action(self, obs, generator=None) -> torch.Tensor:
        self.log.append(f"{self.name} start")
        if self.wait is not None:
            self.wait()
        self.built = True
        self.log.append(f"{self.name} end")
        return torch.full((len(obs["state"]), *CHUNK), self.value)


def _obs() -> dict[str, np.ndarray]:
    return {"state": np.zeros((1, 2, 3), np.float32)}


def _server(models: list, overlap: bool) -> tuple[InferenceServer, InferenceClient]:
    server = InferenceServer(models, 1, multiprocessing.get_context("spawn"), overlap=overlap)
    return server, InferenceClient(claim_slot(server.slots), server.requests)


def _wait_for(log: list[str], entry: str, timeout: float = 10.0) -> None:
    end = time.monotonic() + timeout
    while entry not in log:
        assert time.monotonic() < end, f"{entry!r} never logged: {log}"
        time.sleep(0.005)


def test_runs_alone_only_when_a_cuda_graph_would_be_built() -> None:
    assert runs_alone(SimpleNamespace(would_build_graph=lambda n: n == 2), 2)
    assert not runs_alone(SimpleNamespace(would_build_graph=lambda n: n == 2), 1)
    assert not runs_alone(SimpleNamespace(device=torch.device("cuda")), 2)  # a model without sampling graphs
    policy = DiffusionPolicy(tiny_model_config(image_shape=(3, 16, 16))).eval()
    assert not policy.would_build_graph(1)  # on the CPU: eager sampling, no graph
    if torch.cuda.is_available():
        policy.cuda()
        assert policy.would_build_graph(1)
        policy.build_graphs([1])
        assert not policy.would_build_graph(1) and policy.would_build_graph(2)


def test_overlapped_server_gives_each_model_graphs_of_their_own_generator() -> None:
    policies = [DiffusionPolicy(tiny_model_config(image_shape=(3, 16, 16))).eval() for _ in range(2)]
    InferenceServer(policies[:1], 1, multiprocessing.get_context("spawn"), overlap=False)
    assert not policies[0].own_graph_generators
    InferenceServer(policies, 1, multiprocessing.get_context("spawn"), overlap=True)
    assert all(p.own_graph_generators for p in policies)
    assert all(p.graph_capture_stream is None for p in policies)  # on the CPU: no graphs, no capture stream
    key = policies[0]._graph_key(1, 10)
    policies[0].own_graph_generators = False
    assert policies[0]._graph_key(1, 10) != key  # graphs built before the switch are not reused after it
    if torch.cuda.is_available():
        cuda = [DiffusionPolicy(tiny_model_config(image_shape=(3, 16, 16))).cuda().eval() for _ in range(2)]
        InferenceServer(cuda, 1, multiprocessing.get_context("spawn"), overlap=True)
        assert len({p.graph_capture_stream.cuda_stream for p in cuda}) == 2


def test_models_sharing_a_capture_stream_share_a_lane() -> None:
    stream = SimpleNamespace(cuda_stream=7)
    a, b = SimpleNamespace(graph_capture_stream=stream), SimpleNamespace(graph_capture_stream=stream)
    c = SimpleNamespace(graph_capture_stream=SimpleNamespace(cuda_stream=8))
    server = InferenceServer([a, b, c, c], 1, multiprocessing.get_context("spawn"), overlap=True)
    assert server._lane_of == [0, 0, 1, 1]
    assert lane_key(object()) != lane_key(object())  # without a capture stream: one lane per model object


def test_stats_count_calls_running_at_once() -> None:
    stats = ServerStats()
    with stats.timed_call(rows=3, padded=4), stats.timed_call(rows=1, padded=1):
        time.sleep(0.01)
    with pytest.raises(RuntimeError), stats.timed_call(rows=5, padded=8):
        raise RuntimeError("a failed call")
    out = stats.to_dict()
    assert out["max_concurrent_calls"] == 2 and out["batches"] == 2 and out["rows"] == 4 and out["padded_rows"] == 1
    assert 0.01 <= out["busy_seconds"] <= out["model_seconds"]  # the two calls overlapped
    assert stats._running == 0


def test_request_group_is_agent_and_seeding() -> None:
    obs = _obs()
    assert Request(0, 0, 1, obs, [3]).group == (1, True)
    assert Request(0, 1, 1, obs, None).group == (1, False)


@pytest.mark.parametrize("overlap", [True, False])
def test_two_agents_calls_run_at_the_same_time_only_with_overlap(overlap: bool) -> None:
    log: list[str] = []
    barrier = threading.Barrier(2, timeout=3.0)  # breaks unless both calls are inside at once
    models = [StandIn("a", log, 1.0, barrier.wait), StandIn("b", log, 2.0, barrier.wait)]
    server, client = _server(models, overlap)
    with server:
        rids = [client.submit(agent, _obs(), [agent]) for agent in (0, 1)]
        if overlap:
            got = [client.result(rid) for rid in rids]
            assert [float(g.flat[0]) for g in got] == [1.0, 2.0]  # each agent's rows from its own model
            assert server.stats.max_concurrent_calls == 2
        else:
            with pytest.raises(RuntimeError, match="failed in the parent process"):
                client.result(rids[0])
    assert server.stats.to_dict()["max_concurrent_calls"] == (2 if overlap else 1)


def test_agents_sharing_one_model_take_turns() -> None:
    log: list[str] = []
    release = threading.Event()
    shared = StandIn("m", log, 1.0, lambda: release.wait(5.0))
    server, client = _server([shared, shared], overlap=True)
    with server:
        rids = [client.submit(agent, _obs(), [agent]) for agent in (0, 1)]
        _wait_for(log, "m start")
        time.sleep(0.2)
        assert log == ["m start"]  # the second agent's call waits for the model's first call
        release.set()
        for rid in rids:
            client.result(rid)
    assert log == ["m start", "m end", "m start", "m end"]
    assert server.stats.max_concurrent_calls == 1


def test_a_call_building_a_graph_waits_for_running_calls_and_holds_back_newer_ones() -> None:
    log: list[str] = []
    release = threading.Event()
    models = [StandIn("builds", log, 1.0, needs_graph=True), StandIn("busy", log, 2.0, lambda: release.wait(5.0)),
              StandIn("newer", log, 3.0)]
    server, client = _server(models, overlap=True)
    with server:
        busy = client.submit(1, _obs(), [1])
        _wait_for(log, "busy start")
        builds = client.submit(0, _obs(), [0])
        time.sleep(0.05)
        newer = client.submit(2, _obs(), [2])
        time.sleep(0.2)
        assert log == ["busy start"]  # neither the graph-building call nor the one behind it started
        release.set()
        got = [float(client.result(rid).flat[0]) for rid in (busy, builds, newer)]
    assert got == [2.0, 1.0, 3.0]
    assert log == ["busy start", "busy end", "builds start", "builds end", "newer start", "newer end"]
