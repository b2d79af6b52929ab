"""Shared batched inference: worker requests batched into one model call give each worker its own rows.

The server and its clients are tested in one process with client threads (real multiprocessing queues, a
real tiny model), then end to end: a CPU rollout whose two env worker processes are served by the parent.
"""

from __future__ import annotations

import json
import multiprocessing
import threading
from pathlib import Path

import numpy as np
import pytest
import torch

from rf_dp_agents import load_policy
from rf_dp_agents.policy import DiffusionPolicyAgent
from rf_dp_agents.rollout.config import RolloutConfig
from rf_dp_agents.rollout.client import InferenceClient, RemoteModel, claim_slot
from rf_dp_agents.rollout.inference import InferenceServer, batch_sizes, padded_size

TASK = "LiftBarrier-rf"
IMAGE_HW = (48, 64)
# A row computed inside a padded batch and the same row computed alone differ by float rounding only: the CPU's
# kernels choose their blocking and summation order by batch size and by instruction set, and the sampler carries
# the difference through every denoising step (1.9e-4 seen on a CI machine). A chunk from another seed's noise or
# another worker's row differs by orders of magnitude more (each test checks that it would fail such a mix-up).
BATCH_ATOL = 2e-3
MIXUP_GAP = 50 * BATCH_ATOL


def test_padded_batch_sizes() -> None:
    assert batch_sizes(1) == [1]
    assert batch_sizes(16) == [1, 2, 4, 8, 16]
    assert batch_sizes(25) == [1, 2, 4, 8, 16, 25]
    assert [padded_size(n, 25) for n in (1, 3, 9, 17, 25, 30)] == [1, 4, 16, 25, 25, 30]
    with pytest.raises(ValueError, match="max_rows must be positive"):
        batch_sizes(0)


@pytest.fixture(scope="module")
def tiny_policy_dir(tmp_path_factory: pytest.TempPathFactory, tiny_checkpoint) -> Path:
    return tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "agent", image_hw=IMAGE_HW, seed=3)


def _observations(seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "img": rng.integers(0, 256, (1, *IMAGE_HW, 3), dtype=np.uint8),
        "state": rng.normal(0.0, 0.1, (1, 8)).astype(np.float32),
    }


def test_batched_rows_equal_each_clients_own_model(tiny_policy_dir: Path) -> None:
    local = load_policy(tiny_policy_dir, device="cpu", seed=7)
    clients = 3
    ctx = multiprocessing.get_context("spawn")
    server = InferenceServer([local.model], clients, ctx)
    got: dict[int, list[np.ndarray]] = {}
    errors: list[BaseException] = []

    def client(k: int) -> None:
        try:
            client = InferenceClient(claim_slot(server.slots), server.requests, server.replies)
            agent = DiffusionPolicyAgent(RemoteModel(local.config, 0, client), seed=7 + k)
            got[k] = [agent.predict(_observations(10 * k + t), deterministic=True)[0] for t in range(3)]
        except BaseException as err:  # surfaced in the main thread
            errors.append(err)

    with server:
        threads = [threading.Thread(target=client, args=(k,)) for k in range(clients)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=120)
    assert not errors, errors
    for k in range(clients):
        local.reset()
        local.seed = 7 + k
        want = [local.predict(_observations(10 * k + t), deterministic=True)[0] for t in range(3)]
        np.testing.assert_allclose(np.stack(got[k]), np.stack(want), atol=BATCH_ATOL)
        # the clients' seeds differ, so a row sent back to the wrong client would not pass
        assert k == 0 or np.abs(np.stack(got[k]) - np.stack(got[0])).max() > MIXUP_GAP
    stats = server.stats.to_dict()
    # one chunk per client (the first observation; the queue covers the next two), in one or more batches
    assert stats["rows"] == clients and 1 <= stats["batches"] <= clients
    assert stats["padded_rows"] == sum((padded_size(int(r), clients) - int(r)) * n
                                       for r, n in stats["batches_by_rows"].items())


def test_model_failure_reaches_the_worker(tiny_policy_dir: Path) -> None:
    local = load_policy(tiny_policy_dir, device="cpu")
    server = InferenceServer([local.model], 1, multiprocessing.get_context("spawn"))
    remote = RemoteModel(local.config, 0, InferenceClient(claim_slot(server.slots), server.requests, server.replies))
    bad = {"img": torch.zeros(1, 2, 3, 8, 8, dtype=torch.uint8), "state": torch.zeros(1, 2, 8)}
    with server, pytest.raises(RuntimeError, match="inference for agent 0 failed in the parent process"):
        remote.predict_action(bad)


@pytest.mark.parametrize("overlap", [False, True])
def test_requests_of_two_agents_in_flight_come_back_to_their_agent(tiny_policy_dir: Path, tiny_checkpoint,
                                                                   tmp_path: Path, overlap: bool) -> None:
    other_dir = tiny_checkpoint(tmp_path / "other", image_hw=IMAGE_HW, seed=4)
    locals_ = [load_policy(tiny_policy_dir, device="cpu", seed=1), load_policy(other_dir, device="cpu", seed=2)]
    server = InferenceServer([p.model for p in locals_], 1, multiprocessing.get_context("spawn"), overlap=overlap)
    client = InferenceClient(claim_slot(server.slots), server.requests, server.replies)
    remotes = [DiffusionPolicyAgent(RemoteModel(p.config, i, client), seed=p.seed) for i, p in enumerate(locals_)]
    obs = _observations(5)
    with server:
        pending = [r.submit(obs, deterministic=True) for r in remotes]  # both requests out before either waits
        got = [r.collect(p) for r, p in zip(remotes[::-1], pending[::-1])]  # collected in the other order
    want = [p.predict(obs, deterministic=True)[0] for p in locals_[::-1]]
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, atol=1e-5)
    assert not np.allclose(want[0], want[1], atol=1e-3)  # the two agents' models differ
    assert server.stats.rows == 2


def record_served_chunks(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, object, np.ndarray]]:
    """Record (agent, request, chunk sent back) for every request the parent's inference server answers. Calls of
    different agents may run at once (overlapped shared inference), each in its own thread, so each call collects
    the replies its own thread sends."""
    served: list[tuple[int, object, np.ndarray]] = []
    run, reply = InferenceServer._run, InferenceServer._reply
    mine = threading.local()
    lock = threading.Lock()

    def recording_reply(self, end, message: tuple) -> None:
        getattr(mine, "sent", []).append(message)
        reply(self, end, message)

    def recording_run(self, agent: int, asked: list) -> None:
        mine.sent = []
        run(self, agent, asked)
        chunks = {m[1]: m[2] for m in mine.sent if m[0] == "ok"}
        with lock:
            served.extend((agent, r, chunks[r.rid]) for _, r in asked)

    monkeypatch.setattr(InferenceServer, "_run", recording_run)
    monkeypatch.setattr(InferenceServer, "_reply", recording_reply)
    return served


@pytest.mark.slow
def test_rollout_workers_share_the_parents_models(tmp_path: Path, agent_checkpoints, monkeypatch) -> None:
    from rf_dp_agents.rollout.runner import run_rollout

    served = record_served_chunks(monkeypatch)

    agent_checkpoints(tmp_path / "ckpt", TASK, IMAGE_HW)
    common = dict(task=TASK, checkpoint_dir=str(tmp_path / "ckpt"), num_episodes=3, num_envs=2, seed=40,
                  max_episode_steps=3, num_inference_steps=2, deterministic=True, progress=False)
    shared = run_rollout(RolloutConfig(**common, inference="shared", output=str(tmp_path / "shared.json"),
                                       record_video=True, video_episodes=1, video_dir=str(tmp_path / "videos")))
    assert shared["inference"]["mode"] == "shared"
    server = shared["inference"]["server"]
    assert server["rows"] == 3 * 2  # one chunk per agent per episode: 3 steps < the 8-action queue
    assert [ep["seed"] for ep in shared["episodes"]] == [40, 41, 42]
    assert [ep["video"] is not None for ep in shared["episodes"]] == [True, False, False]
    per_worker = run_rollout(RolloutConfig(**common, inference="per-worker", output=str(tmp_path / "own.json")))
    assert per_worker["inference"] == {"mode": "per-worker"}
    for a, b in zip(shared["episodes"], per_worker["episodes"]):
        assert (a["steps"], a["first_success_step"]) == (b["steps"], b["first_success_step"])
    # every chunk a worker got is what that agent's own model (as a per-worker rollout runs it) samples for the
    # worker's observation history and seed
    own = [load_policy(tmp_path / "ckpt" / f"{TASK}_Agent{i}", device="cpu", num_inference_steps=2).model
           for i in range(2)]
    assert sorted(agent for agent, _, _ in served) == [0, 0, 0, 1, 1, 1]
    for agent, request, chunk in served:
        obs = {k: torch.from_numpy(v) for k, v in request.obs.items()}
        gens = [torch.Generator().manual_seed(int(seed)) for seed in request.seeds]
        other = [torch.Generator().manual_seed(int(seed) + 1) for seed in request.seeds]
        with torch.no_grad():
            want = own[agent].predict_action(obs, generator=gens).numpy()
            mixed_up = own[agent].predict_action(obs, generator=other).numpy()
        np.testing.assert_allclose(chunk, want, atol=BATCH_ATOL)
        assert np.abs(chunk - mixed_up).max() > MIXUP_GAP  # another seed's chunk would not pass
    first = {agent: chunk for agent, _, chunk in served}
    assert not np.allclose(first[0], first[1], atol=1e-3)  # the two agents' models differ
    assert json.loads((tmp_path / "shared.json").read_text())["inference"]["server"]["rows"] == 6
