"""Sequence windows over back-to-back episodes, with edge padding, built and gathered without Python loops.

A window is (episode, start) with ``start`` in ``[-pad_before, L - T + pad_after]`` relative to the episode;
its step ``j`` reads buffer index ``episode_start + clip(start + j, 0, L - 1)``, which repeats the first
frame before the episode and the last frame after it (edge padding, as in Chi et al.'s SequenceSampler).
"""

from __future__ import annotations

import numpy as np
import torch


def episode_masks(
    n_episodes: int, val_ratio: float, seed: int, max_train_episodes: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Boolean (train, val) episode masks: a seeded random ``val_ratio`` share held out (at least one episode
    when ``val_ratio > 0`` and more than one episode exists); ``max_train_episodes`` subsamples the rest."""
    if n_episodes <= 0:
        raise ValueError(f"episode_masks: need at least one episode, got {n_episodes}")
    if not 0.0 <= val_ratio < 1.0:
        raise ValueError(f"episode_masks: val_ratio must be in [0, 1), got {val_ratio}")
    rng = np.random.default_rng(seed)
    val = np.zeros(n_episodes, dtype=bool)
    if val_ratio > 0 and n_episodes > 1:
        n_val = min(max(1, round(n_episodes * val_ratio)), n_episodes - 1)
        val[rng.choice(n_episodes, size=n_val, replace=False)] = True
    train = ~val
    if max_train_episodes is not None and train.sum() > max_train_episodes:
        if max_train_episodes <= 0:
            raise ValueError(f"episode_masks: max_train_episodes must be positive, got {max_train_episodes}")
        keep = rng.choice(np.flatnonzero(train), size=max_train_episodes, replace=False)
        train = np.zeros(n_episodes, dtype=bool)
        train[keep] = True
    return train, val


class SequenceSampler:
    """All windows of ``sequence_length`` steps over the episodes selected by ``episode_mask``.

    ``windows`` is an int64 (W, 3) array of (episode_start, episode_length, start_offset); :meth:`indices`
    turns window ids into an (B, T) matrix of buffer indices, in numpy or torch, on any device.
    """

    def __init__(
        self,
        episode_ends: np.ndarray,
        sequence_length: int,
        pad_before: int = 0,
        pad_after: int = 0,
        episode_mask: np.ndarray | None = None,
    ) -> None:
        if sequence_length <= 0 or pad_before < 0 or pad_after < 0:
            raise ValueError(
                f"SequenceSampler: need sequence_length > 0 and non-negative padding, got "
                f"{sequence_length}, {pad_before}, {pad_after}"
            )
        ends = np.asarray(episode_ends, dtype=np.int64)
        starts = np.concatenate([[0], ends[:-1]])
        lengths = ends - starts
        if episode_mask is None:
            episode_mask = np.ones(len(ends), dtype=bool)
        episode_mask = np.asarray(episode_mask, dtype=bool)
        if episode_mask.shape != ends.shape:
            raise ValueError(f"SequenceSampler: episode_mask shape {episode_mask.shape} != episodes {ends.shape}")
        self.sequence_length = int(sequence_length)
        self.pad_before = int(pad_before)
        self.pad_after = int(pad_after)
        # Windows per episode: starts from -pad_before to L - T + pad_after inclusive.
        counts = np.clip(lengths - sequence_length + pad_before + pad_after + 1, 0, None) * episode_mask
        episode_of_window = np.repeat(np.arange(len(ends)), counts)
        first_window = np.repeat(np.cumsum(counts) - counts, counts)
        offset = np.arange(int(counts.sum()), dtype=np.int64) - first_window - pad_before
        self.windows = np.stack(
            [starts[episode_of_window], lengths[episode_of_window], offset], axis=1
        ).astype(np.int64)
        self.episode_of_window = episode_of_window.astype(np.int64)
        self._windows_t: dict[torch.device, torch.Tensor] = {}

    def __len__(self) -> int:
        return int(self.windows.shape[0])

    def indices(self, window_ids: np.ndarray | torch.Tensor, length: int | None = None) -> np.ndarray | torch.Tensor:
        """Buffer indices (B, length) of the first ``length`` (default: all) steps of each window."""
        length = self.sequence_length if length is None else length
        if isinstance(window_ids, torch.Tensor):
            device = window_ids.device
            if device not in self._windows_t:
                self._windows_t[device] = torch.as_tensor(self.windows, device=device)
            w = self._windows_t[device][window_ids]
            steps = torch.arange(length, device=device)
            rel = (w[:, 2:3] + steps).clamp_min(0)
            return w[:, 0:1] + torch.minimum(rel, w[:, 1:2] - 1)
        w = self.windows[np.asarray(window_ids, dtype=np.int64)]
        rel = np.clip(w[:, 2:3] + np.arange(length), 0, None)
        return w[:, 0:1] + np.minimum(rel, w[:, 1:2] - 1)


__all__ = ["SequenceSampler", "episode_masks"]
