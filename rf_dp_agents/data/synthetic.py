"""Synthetic zarr datasets for tests, smoke runs and benchmarks, written without a simulator.

``write_synthetic_dataset`` makes a small learnable dataset (the image encodes the time step and the phase of
a smooth joint trajectory, so the loss can fall); ``write_seed_size_dataset`` makes one of the seed's size
(13,617 training windows at 240x320) whose frames compress like rendered ones.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from rf_dp_agents.data.writer import ZarrWriter
from rf_dp_agents.progress import progress_bar


def write_synthetic_dataset(
    path: str | Path,
    n_episodes: int = 4,
    episode_length: int = 20,
    image_hw: tuple[int, int] = (32, 32),
    state_dim: int = 8,
    action_dim: int = 8,
    seed: int = 0,
    extra_cameras: tuple[str, ...] = (),
) -> Path:
    """Write ``n_episodes`` episodes (``img`` uint8 (L,3,H,W), ``state`` (L,D), ``action`` (L,A)) to ``path``;
    each name in ``extra_cameras`` (``img_<camera>``) adds another image array (the inverted ``img``)."""
    rng = np.random.default_rng(seed)
    t = np.linspace(0.0, 1.0, episode_length, dtype=np.float32)[:, None]
    with ZarrWriter(path) as writer:
        for _ in range(n_episodes):
            phase = rng.uniform(0.0, 1.0, size=(1, max(state_dim, action_dim))).astype(np.float32)
            traj = np.sin(2 * np.pi * (t + phase)).astype(np.float32)
            action = traj[:, :action_dim]
            state = np.concatenate([traj[:1], traj[:-1]], axis=0)[:, :state_dim]
            img = np.zeros((episode_length, 3, *image_hw), dtype=np.uint8)
            img[:, 0] = (t[:, 0] * 255).astype(np.uint8)[:, None, None]
            img[:, 1] = np.uint8(phase[0, 0] * 255)
            cameras = {key: 255 - img for key in extra_cameras}
            writer.add_episode({"img": img, **cameras, "state": state, "action": action})
    return Path(path)


def episode_lengths_for(n_windows: int, n_episodes: int, pred_horizon: int = 16, obs_horizon: int = 2,
                        action_horizon: int = 8, seed: int = 0) -> np.ndarray:
    """Episode lengths whose training windows (To/T/Ta padding) add up to exactly ``n_windows``."""
    per_episode_loss = pred_horizon - obs_horizon - action_horizon + 1  # windows = L - this
    total = n_windows + per_episode_loss * n_episodes
    rng = np.random.default_rng(seed)
    weights = rng.uniform(0.8, 1.2, n_episodes)
    lengths = np.floor(weights / weights.sum() * total).astype(np.int64)
    lengths[: total - lengths.sum()] += 1
    return lengths


def synthetic_episode(length: int, image_hw: tuple[int, int], rng: np.random.Generator) -> dict[str, np.ndarray]:
    """One episode: uint8 images (L, 3, H, W), smooth 8-d state and action trajectories."""
    h, w = image_hw
    t = np.linspace(0.0, 1.0, length, dtype=np.float32)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    base = np.stack([150 + 40 * yy / h, 120 + 30 * xx / w, 90 + 20 * (xx + yy) / (h + w)]).astype(np.int16)
    noise_bank = rng.integers(-3, 4, size=(4, 3, h, w), dtype=np.int16)
    frames = np.empty((length, 3, h, w), dtype=np.uint8)
    phase = rng.uniform(0, 2 * np.pi, 8).astype(np.float32)
    bar_colour = np.array([200, 60, 40], dtype=np.int16)[:, None, None]
    for i in range(length):
        img = base + noise_bank[i % len(noise_bank)]
        bar_y = max(int(0.6 * h) - int(0.3 * h * t[i]), 0)
        img[:, bar_y : bar_y + max(h // 24, 2), w // 6 : 5 * w // 6] = bar_colour
        for k, x0 in enumerate((w // 6, 5 * w // 6)):
            x = int(x0 + 0.05 * w * np.sin(2 * np.pi * t[i] + phase[k]))
            img[:, : max(bar_y, 1), max(x - w // 30, 0) : x + w // 30] = 230
        np.clip(img, 0, 255, out=img)
        frames[i] = img
    joints = np.sin(np.outer(t, np.arange(1, 9, dtype=np.float32)) + phase).astype(np.float32)
    action = joints + 0.01 * rng.standard_normal(joints.shape).astype(np.float32)
    return {"img": frames, "state": joints, "action": action}


def write_seed_size_dataset(
    path: str | Path,
    n_windows: int,
    n_episodes: int,
    image_hw: tuple[int, int] = (240, 320),
    seed: int = 0,
    progress: bool = True,
) -> Path:
    """Write a dataset of the size and look of a real one: ``n_windows`` training windows at the seed config's
    horizons, frames with a table-coloured gradient, a bar and two arm-like blocks moving smoothly, plus sensor
    noise (they compress like rendered frames, not like random bytes or zeros)."""
    rng = np.random.default_rng(seed)
    lengths = episode_lengths_for(n_windows, n_episodes, seed=seed)
    with ZarrWriter(path, overwrite=True) as writer:
        for length in progress_bar(lengths, desc="synthetic episodes", disable=not progress):
            writer.add_episode(synthetic_episode(int(length), image_hw, rng))
    return Path(path)


__all__ = ["episode_lengths_for", "synthetic_episode", "write_seed_size_dataset", "write_synthetic_dataset"]
