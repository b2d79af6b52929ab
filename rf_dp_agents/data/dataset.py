"""Training data for one agent: a zarr dataset held as tensors, split by episode, gathered in whole batches.

``SequenceDataset`` loads the camera arrays (uint8; ``img`` by default, more with ``camera_keys``), ``state``
and ``action`` into tensors (move them to the GPU with
:meth:`to`), builds train and validation windows with :class:`SequenceSampler`, and returns batches with
:meth:`get_batch` by pure tensor indexing. It is also a ``torch.utils.data.Dataset`` over the training
windows (one sample per item) for a standard ``DataLoader``.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from rf_dp_agents.config import ModelConfig
from rf_dp_agents.data.errors import DatasetError
from rf_dp_agents.data.normalizer import Mode, Normalizer
from rf_dp_agents.data.replay_buffer import ReplayBuffer
from rf_dp_agents.data.sampler import SequenceSampler, episode_masks

Batch = dict[str, torch.Tensor]


class SequenceDataset(Dataset):
    """Windows of ``pred_horizon`` steps; observations are the first ``obs_horizon`` steps of each window.

    Padding follows the reference code: ``pad_before = obs_horizon - 1``, ``pad_after = action_horizon - 1``.
    """

    def __init__(
        self,
        zarr_path: str | Path | ReplayBuffer,
        obs_horizon: int = 2,
        pred_horizon: int = 16,
        action_horizon: int = 8,
        val_ratio: float = 0.1,
        seed: int = 42,
        max_train_episodes: int | None = None,
        image_key: str | None = None,
        camera_keys: Sequence[str] = ("img",),
    ) -> None:
        self.camera_keys = tuple(camera_keys)
        if not self.camera_keys:
            raise ValueError("SequenceDataset: camera_keys must name at least one camera array")
        if isinstance(zarr_path, ReplayBuffer):
            buffer = zarr_path
        else:
            keys = (*self.camera_keys, "state", "action")
            buffer = ReplayBuffer.open(zarr_path, keys=keys, image_key=image_key, required=keys)
        self.source = buffer.source
        if not 0 < obs_horizon <= pred_horizon or action_horizon <= 0:
            raise ValueError(
                f"SequenceDataset: need 0 < obs_horizon <= pred_horizon and action_horizon > 0, got "
                f"To={obs_horizon}, T={pred_horizon}, Ta={action_horizon}"
            )
        self.obs_horizon, self.pred_horizon, self.action_horizon = obs_horizon, pred_horizon, action_horizon
        self.episode_ends = buffer.episode_ends
        self.images = {key: torch.from_numpy(np.ascontiguousarray(buffer[key])) for key in self.camera_keys}
        self.state = torch.from_numpy(np.asarray(buffer["state"], dtype=np.float32))
        self.action = torch.from_numpy(np.asarray(buffer["action"], dtype=np.float32))
        for key, value in (("state", self.state), ("action", self.action)):
            if not torch.isfinite(value).all():
                step = int(torch.nonzero(~torch.isfinite(value).all(dim=1))[0])
                raise DatasetError(f"{self.source}: data/{key} has NaN or inf at step {step}")
        self.train_mask, self.val_mask = episode_masks(buffer.n_episodes, val_ratio, seed, max_train_episodes)
        pad = dict(pad_before=obs_horizon - 1, pad_after=action_horizon - 1)
        self.train_sampler = SequenceSampler(self.episode_ends, pred_horizon, episode_mask=self.train_mask, **pad)
        self.val_sampler = SequenceSampler(self.episode_ends, pred_horizon, episode_mask=self.val_mask, **pad)
        if len(self.train_sampler) == 0:
            raise DatasetError(
                f"{self.source}: no training windows (episodes shorter than "
                f"{pred_horizon - obs_horizon - action_horizon + 2} steps, or none selected)"
            )
        self._hash: str | None = None

    @classmethod
    def for_model(
        cls,
        zarr_path: str | Path,
        model: ModelConfig,
        val_ratio: float,
        seed: int,
        max_train_episodes: int | None = None,
        image_key: str | None = None,
    ) -> "SequenceDataset":
        """The dataset a model with config ``model`` trains on: its horizons and its cameras."""
        return cls(
            zarr_path, model.obs_horizon, model.pred_horizon, model.action_horizon, val_ratio=val_ratio, seed=seed,
            max_train_episodes=max_train_episodes, image_key=image_key, camera_keys=model.camera_keys,
        )

    @property
    def device(self) -> torch.device:
        """Where the data tensors live."""
        return self.state.device

    @property
    def tensors(self) -> list[torch.Tensor]:
        """Every data tensor: the camera arrays, state and action."""
        return [*self.images.values(), self.state, self.action]

    def to(self, device: str | torch.device) -> "SequenceDataset":
        """Move the data tensors (images stay uint8) to ``device``; returns self."""
        self.images = {key: t.to(device) for key, t in self.images.items()}
        self.state, self.action = self.state.to(device), self.action.to(device)
        return self

    def pin_memory(self) -> "SequenceDataset":
        """Move the data tensors into page-locked host memory (fast, asynchronous copies to a GPU; needs CUDA),
        one array at a time, so the extra memory at any moment is one array's; returns self."""
        if self.device.type != "cpu":
            raise ValueError(f"pin_memory: the dataset is on {self.device}, not in host memory")
        for key in list(self.images):
            self.images[key] = self.images[key].pin_memory()
        self.state, self.action = self.state.pin_memory(), self.action.pin_memory()
        return self

    @property
    def pinned(self) -> bool:
        """Whether the data tensors are in page-locked host memory."""
        return self.device.type == "cpu" and all(t.is_pinned() for t in self.tensors)

    @property
    def shapes(self) -> dict[str, tuple[int, ...]]:
        """Per-step shapes: each camera (C, H, W), ``state`` (D,), ``action`` (A,)."""
        shapes = {key: tuple(t.shape[1:]) for key, t in self.images.items()}
        return {**shapes, "state": tuple(self.state.shape[1:]), "action": tuple(self.action.shape[1:])}

    @property
    def n_train(self) -> int:
        """Number of training windows."""
        return len(self.train_sampler)

    @property
    def n_val(self) -> int:
        """Number of validation windows."""
        return len(self.val_sampler)

    def get_batch(self, window_ids: torch.Tensor | np.ndarray, split: str = "train", out: Batch | None = None) -> Batch:
        """Gather a batch of windows: each camera uint8 (B, To, C, H, W), ``state`` (B, To, D), ``action`` (B, T, A).

        ``out``: tensors of those shapes on the data's device to gather into (no allocation) instead of new ones;
        returned."""
        sampler = self.train_sampler if split == "train" else self.val_sampler
        if split not in ("train", "val"):
            raise ValueError(f"split must be 'train' or 'val', got {split!r}")
        ids = torch.as_tensor(window_ids, dtype=torch.int64, device=self.device)
        idx = sampler.indices(ids)
        obs_idx = idx[:, : self.obs_horizon]
        sources = {**self.images, "state": self.state, "action": self.action}
        if out is None:
            return {key: t[idx if key == "action" else obs_idx] for key, t in sources.items()}
        for key, t in sources.items():
            rows = (idx if key == "action" else obs_idx).reshape(-1)
            torch.index_select(t, 0, rows, out=out[key].view(-1, *t.shape[1:]))
        return out

    def batch_shapes(self, batch_size: int) -> dict[str, tuple[int, ...]]:
        """Shapes of a batch of ``batch_size`` windows, as :meth:`get_batch` returns it."""
        return {key: (batch_size, self.pred_horizon if key == "action" else self.obs_horizon, *shape)
                for key, shape in self.shapes.items()}

    def __len__(self) -> int:
        return self.n_train

    def __getitem__(self, i: int) -> Batch:
        batch = self.get_batch(torch.tensor([i]))
        return {key: value[0] for key, value in batch.items()}

    def fit_normalizer(self, mode: Mode = "minmax") -> Normalizer:
        """Fit state and action statistics over the training episodes only."""
        steps = np.concatenate(
            [np.arange(s, e) for s, e, keep in zip(np.r_[0, self.episode_ends[:-1]], self.episode_ends, self.train_mask) if keep]
        )
        steps_t = torch.from_numpy(steps).to(self.device)
        return Normalizer.fit({"state": self.state[steps_t].cpu(), "action": self.action[steps_t].cpu()}, mode=mode)

    @property
    def content_hash(self) -> str:
        """blake2b digest of the episode ends and every array's bytes (identifies the data a run trained on)."""
        if self._hash is None:
            h = hashlib.blake2b(digest_size=16)
            h.update(self.episode_ends.tobytes())
            for t in self.tensors:
                h.update(str(tuple(t.shape)).encode())
                h.update(t.cpu().numpy().tobytes())
            self._hash = h.hexdigest()
        return self._hash


__all__ = ["SequenceDataset", "Batch"]
