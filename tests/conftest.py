"""Shared test fixtures."""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import pytest
import torch

from rf_dp_agents.checkpoint import save_checkpoint
from rf_dp_agents.config import tiny_model_config
from rf_dp_agents.data.normalizer import Normalizer
from rf_dp_agents.model import DiffusionPolicy

PANDA_TARGET = np.array([0.0, np.pi / 8, 0.0, -np.pi * 5 / 8, 0.0, np.pi * 3 / 4, np.pi / 4, 1.0], np.float32)
"""RoboFactory's initial arm joints + an open gripper command: the tiny policies act around it."""


def make_tiny_checkpoint(path: Path, image_hw: tuple[int, int], seed: int = 0, steps: int = 3) -> Path:
    """Train a tiny policy for a few Adam steps on synthetic data near the Panda's start pose; save it at ``path``."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    h, w = image_hw
    actions = PANDA_TARGET + rng.normal(0.0, 0.05, (64, 8)).astype(np.float32)
    model = DiffusionPolicy(tiny_model_config(image_shape=(3, h, w)), Normalizer.fit({"state": actions, "action": actions}))
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    for _ in range(steps):
        batch = {
            "img": torch.randint(0, 256, (4, 2, 3, h, w), dtype=torch.uint8),
            "state": torch.as_tensor(actions[:8].reshape(4, 2, 8)),
            "action": torch.as_tensor(np.resize(actions, (4, 16, 8))),
        }
        loss = model.compute_loss(batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return save_checkpoint(path, model, {"epoch": 0, "train_steps": steps})


def make_agent_checkpoints(root: Path, task: str, image_hw: tuple[int, int], num_agents: int = 2) -> Path:
    """``root/<task>_Agent<i>/best`` for every agent (seed ``i``), the layout ``rollout.py --checkpoint-dir`` reads."""
    for i in range(num_agents):
        make_tiny_checkpoint(root / f"{task}_Agent{i}" / "best", image_hw=image_hw, seed=i)
    return root


@pytest.fixture(scope="session")
def agent_checkpoints() -> Callable[..., Path]:
    """``agent_checkpoints(root, task, image_hw, num_agents=2)``: tiny per-agent runs under ``root``."""
    return make_agent_checkpoints


@pytest.fixture(scope="session")
def tiny_checkpoint() -> Callable[..., Path]:
    """``tiny_checkpoint(path, image_hw, seed=0, steps=3)`` writes a briefly trained tiny policy at ``path``."""
    return make_tiny_checkpoint


@pytest.fixture(scope="session", autouse=True)
def one_torch_thread() -> Iterator[None]:
    """Every test, and every process a test starts, runs torch on one intra-op thread.

    The tests' models are tiny and the CI machine has 2 cores that the simulator, worker processes and other
    jobs share: a tiny-preset training step on two threads of a busy 2-core machine took 1.6-4.7 s, on one
    thread 0.4-0.7 s.
    """
    threads = torch.get_num_threads()
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("OMP_NUM_THREADS", "1")
        torch.set_num_threads(1)
        yield
    torch.set_num_threads(threads)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Files that hold a test marked ``slow`` are collected first (otherwise in their order): ``scripts/test.sh``
    hands whole files to its pytest-xdist workers in collection order, so the long files start early and no worker
    is left finishing one alone at the end."""
    slow_files = {item.path for item in items if item.get_closest_marker("slow")}
    items.sort(key=lambda item: item.path not in slow_files)
