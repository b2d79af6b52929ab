"""Training batches from a dataset held in host memory, for the CUDA-graph step: gathered on the CPU ahead of time.

With ``--dataset-device pinned`` (or ``auto`` when the data does not fit the GPU) the dataset's tensors stay in
page-locked host memory. :class:`HostBatchFeed` owns one batch on the device, which the captured step reads as its
input, and two staging batches in page-locked host memory. For step k, :meth:`HostBatchFeed.load` waits for batch k's
gather (started in a worker thread while step k-1 ran), enqueues its copy to the device batch on the current stream
(asynchronous from page-locked memory, so it runs right before the step's kernels without stopping the host), and
starts gathering batch k+1 into the other staging batch; that gather first waits for the copy that last read its
staging batch. Gathers are :meth:`SequenceDataset.get_batch` into the preallocated buffers (``index_select``), so
the step sees bit for bit the batches it sees with the dataset on the GPU.
"""

from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import torch

from rf_dp_agents.data.dataset import Batch, SequenceDataset


@dataclass
class _Gather:
    """A gather under way (or done) into one staging batch: the window ids and the worker's future."""

    ids: torch.Tensor
    future: Future


class HostBatchFeed:
    """Feeds ``batch_size``-window batches of a host-memory ``dataset`` into :attr:`device_batch` on ``device``.

    ``split`` picks the training or the validation windows. On a CUDA ``device`` the staging batches are
    page-locked; on the CPU (tests) they are ordinary tensors and the copies are synchronous.
    """

    def __init__(self, dataset: SequenceDataset, batch_size: int, device: torch.device | str, split: str = "train"):
        device = torch.device(device)
        if dataset.device.type != "cpu":
            raise ValueError(f"HostBatchFeed needs the dataset in host memory, it is on {dataset.device}")
        if split not in ("train", "val"):
            raise ValueError(f"split must be 'train' or 'val', got {split!r}")
        if int(batch_size) <= 0:
            raise ValueError(f"HostBatchFeed batch_size must be positive, got {batch_size}")
        self.dataset, self.batch_size, self.device, self.split = dataset, int(batch_size), device, split
        pin = device.type == "cuda"
        dtypes = {**{key: t.dtype for key, t in dataset.images.items()},
                  "state": dataset.state.dtype, "action": dataset.action.dtype}
        shapes = dataset.batch_shapes(self.batch_size)
        self.staging: list[Batch] = [
            {key: torch.empty(shape, dtype=dtypes[key], pin_memory=pin) for key, shape in shapes.items()}
            for _ in range(2)
        ]
        self.device_batch: Batch = {key: torch.empty(shape, dtype=dtypes[key], device=device)
                                    for key, shape in shapes.items()}
        """The batch the captured step reads; :meth:`load` refills it in place."""
        self._copied: list[torch.cuda.Event | None] = [None, None]  # the last copy out of each staging batch
        self._gathers: dict[int, _Gather] = {}
        self._slot = 0
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="rf-host-feed")

    def gather_into(self, out: Batch, window_ids: torch.Tensor) -> None:
        """Gather the windows ``window_ids`` (CPU int64, ``batch_size`` of them) into ``out`` (host tensors)."""
        self.dataset.get_batch(window_ids, self.split, out=out)

    def _gather_slot(self, slot: int, window_ids: torch.Tensor) -> None:
        copied = self._copied[slot]
        if copied is not None:
            copied.synchronize()  # the staging batch is still being copied to the device
        self.gather_into(self.staging[slot], window_ids)

    def _ids(self, window_ids: torch.Tensor) -> torch.Tensor:
        ids = torch.as_tensor(window_ids, dtype=torch.int64).cpu().reshape(-1)
        if ids.numel() != self.batch_size:
            raise ValueError(f"HostBatchFeed expects {self.batch_size} window ids, got {ids.numel()}")
        return ids

    def load(self, window_ids: torch.Tensor, next_ids: torch.Tensor | None = None) -> Batch:
        """Fill :attr:`device_batch` with the windows ``window_ids`` (the copy is enqueued on the current stream),
        then start gathering ``next_ids`` (the next call's windows, if known) in the background; returns
        :attr:`device_batch`."""
        ids = self._ids(window_ids)
        slot = self._slot
        ahead = self._gathers.pop(slot, None)
        if ahead is not None:
            ahead.future.result()  # also re-raises a failed gather
        if ahead is None or not torch.equal(ahead.ids, ids):
            self._gather_slot(slot, ids)
        for key, target in self.device_batch.items():
            target.copy_(self.staging[slot][key], non_blocking=True)
        if self.device.type == "cuda":
            event = torch.cuda.Event()
            event.record()
            self._copied[slot] = event
        self._slot = 1 - slot
        if next_ids is not None:
            upcoming = self._ids(next_ids)
            self._gathers[self._slot] = _Gather(upcoming, self._pool.submit(self._gather_slot, self._slot, upcoming))
        return self.device_batch

    def close(self) -> None:
        """Finish the gather under way and stop the worker thread."""
        self._pool.shutdown(wait=True)
        self._gathers.clear()


__all__ = ["HostBatchFeed"]
