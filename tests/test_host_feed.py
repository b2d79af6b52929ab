"""HostBatchFeed (--dataset-device pinned): the batches it puts on the device are get_batch's, with and without
the gather ahead; the trainer's step choice and the dataset placement for a host-memory dataset."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch

from rf_dp_agents.data import SequenceDataset, ZarrWriter
from rf_dp_agents.training.config import TrainConfig
from rf_dp_agents.training.distributed import DistInfo
from rf_dp_agents.training.graphed import StepChoice
from rf_dp_agents.training.host_feed import HostBatchFeed
from rf_dp_agents.training.jobs import place_dataset


@pytest.fixture
def dataset(tmp_path) -> SequenceDataset:
    """Two cameras, every step's values distinct, four episodes of different lengths."""
    path = tmp_path / "d.zarr"
    rng = np.random.default_rng(0)
    with ZarrWriter(path) as writer:
        for n in (20, 12, 30, 25):
            writer.add_episode({
                "img": rng.integers(0, 256, (n, 3, 6, 8), dtype=np.uint8),
                "wrist": rng.integers(0, 256, (n, 3, 6, 8), dtype=np.uint8),
                "state": rng.normal(size=(n, 5)).astype(np.float32),
                "action": rng.normal(size=(n, 4)).astype(np.float32),
            })
    return SequenceDataset(path, obs_horizon=2, pred_horizon=16, action_horizon=8, val_ratio=0.25, seed=1,
                           camera_keys=("img", "wrist"))


def _equal(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_batches_equal_get_batch_with_the_gather_ahead(dataset: SequenceDataset) -> None:
    feed = HostBatchFeed(dataset, batch_size=7, device="cpu")
    order = torch.randperm(dataset.n_train, generator=torch.Generator().manual_seed(3))
    steps = [order[i * 7 : (i + 1) * 7] for i in range(len(order) // 7)]
    try:
        for k, ids in enumerate(steps):
            ahead = steps[k + 1] if k + 1 < len(steps) else None
            got = feed.load(ids, next_ids=ahead)
            assert got is feed.device_batch
            assert _equal(got, dataset.get_batch(ids)), f"step {k}"
    finally:
        feed.close()


def test_a_wrong_guess_ahead_is_gathered_again(dataset: SequenceDataset) -> None:
    """When the next call asks for other windows than the ones gathered ahead, it gets the ones it asked for."""
    feed = HostBatchFeed(dataset, batch_size=4, device="cpu")
    try:
        feed.load(torch.tensor([0, 1, 2, 3]), next_ids=torch.tensor([4, 5, 6, 7]))
        asked = torch.tensor([9, 8, 10, 11])
        assert _equal(feed.load(asked), dataset.get_batch(asked))
        again = torch.tensor([3, 2, 1, 0])
        assert _equal(feed.load(again), dataset.get_batch(again))
    finally:
        feed.close()


def test_the_gather_ahead_runs_in_the_worker_and_lands_in_the_other_staging_batch(dataset: SequenceDataset) -> None:
    """The gather of the next batch starts at load() in the feed's worker thread, into the staging batch the current
    copy did not read (so the device batch of this step is untouched by it)."""
    feed = HostBatchFeed(dataset, batch_size=4, device="cpu")
    threads: list[str] = []
    original = feed.gather_into

    def spy(out: dict, ids: torch.Tensor) -> None:
        threads.append(threading.current_thread().name)
        original(out, ids)

    feed.gather_into = spy  # type: ignore[method-assign]
    try:
        now, ahead = torch.tensor([0, 1, 2, 3]), torch.tensor([20, 21, 22, 23])
        feed.load(now, next_ids=ahead)
        feed._gathers[1].future.result()
        assert threads[0] == threading.current_thread().name and threads[1].startswith("rf-host-feed")
        assert _equal(feed.staging[0], dataset.get_batch(now)) and _equal(feed.staging[1], dataset.get_batch(ahead))
        assert _equal(feed.device_batch, dataset.get_batch(now))
        feed.load(ahead)
        assert len(threads) == 2, "the batch gathered ahead was gathered again"
    finally:
        feed.close()


def test_validation_split_and_bad_input(dataset: SequenceDataset) -> None:
    feed = HostBatchFeed(dataset, batch_size=3, device="cpu", split="val")
    try:
        ids = torch.arange(3)
        assert _equal(feed.load(ids), dataset.get_batch(ids, "val"))
        with pytest.raises(ValueError, match="expects 3 window ids, got 4"):
            feed.load(torch.arange(4))
    finally:
        feed.close()
    with pytest.raises(ValueError, match="split must be 'train' or 'val'"):
        HostBatchFeed(dataset, 3, "cpu", split="test")
    with pytest.raises(ValueError, match="batch_size must be positive"):
        HostBatchFeed(dataset, 0, "cpu")


def _info(device: str) -> DistInfo:
    return DistInfo(rank=0, local_rank=0, world_size=1, device=torch.device(device))


def test_step_choice_takes_the_graph_with_a_page_locked_dataset() -> None:
    """On a CUDA device the whole-step graph runs with the dataset on the GPU or page-locked on the host; ordinary
    host memory (--dataset-device cpu, or pinning that failed) takes the eager step."""
    cuda = _info("cuda")
    pinned = StepChoice(TrainConfig(dataset_device="pinned"), cuda, torch.device("cpu"), dataset_pinned=True)
    assert pinned.blockers() == [] and pinned.cuda_graphs
    on_gpu = StepChoice(TrainConfig(dataset_device="train"), cuda, torch.device("cuda"))
    assert on_gpu.blockers() == []
    for cfg in (TrainConfig(dataset_device="cpu"), TrainConfig(dataset_device="auto")):
        pageable = StepChoice(cfg, cuda, torch.device("cpu"), dataset_pinned=False)
        assert any("page-locked host memory" in b for b in pageable.blockers()) and not pageable.cuda_graphs


def test_place_dataset_leaves_a_cpu_run_alone(dataset: SequenceDataset) -> None:
    for choice in ("auto", "train", "pinned", "cpu"):
        place_dataset(dataset, torch.device("cpu"), choice)
        assert dataset.device.type == "cpu" and not dataset.pinned
    with pytest.raises(ValueError, match="dataset is on meta, not in host memory"):
        dataset.to("meta").pin_memory()
