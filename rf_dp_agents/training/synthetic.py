"""A small synthetic zarr dataset for CPU smoke runs and tests of the trainer.

Each episode is a smooth joint-space trajectory with a random phase; the image encodes the time step (red)
and the phase (green), so the actions are predictable from the observations and the loss can fall.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from rf_dp_agents.data import ZarrWriter


def write_synthetic_dataset(
    path: str | Path,
    n_episodes: int = 4,
    episode_length: int = 20,
    image_hw: tuple[int, int] = (32, 32),
    state_dim: int = 8,
    action_dim: int = 8,
    seed: int = 0,
) -> Path:
    """Write ``n_episodes`` episodes (``img`` uint8 (L,3,H,W), ``state`` (L,D), ``action`` (L,A)) to ``path``."""
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
            writer.add_episode({"img": img, "state": state, "action": action})
    return Path(path)


__all__ = ["write_synthetic_dataset"]
