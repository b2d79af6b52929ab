"""A run killed with SIGKILL mid-training and resumed with --resume ends with the weights of an uninterrupted run.

The first test starts ``scripts/train.py`` as fresh processes; the others fork it from a process that has the
trainer imported (``forked_cli``): the same script and code path, with its own pid, killed with a real SIGKILL.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from forked_cli import ForkServer
from safetensors.torch import load_file

from rf_dp_agents.training.metrics import read_metrics
from rf_dp_agents.training.state import load_training_state
from rf_dp_agents.data.synthetic import write_synthetic_dataset

REPO = Path(__file__).resolve().parents[1]
SCRIPT = str(REPO / "scripts" / "train.py")


def command(data: Path, out: Path, *extra: str) -> list[str]:
    return [
        sys.executable, SCRIPT, "--preset", "tiny", "--device", "cpu", "--zarr-path", str(data), "--output-dir", str(out),
        "--epochs", "3", "--batch-size", "8", "--save-every", "1", "--log-flush-every", "1", "--deterministic",
        "--no-progress", *extra,
    ]


@pytest.fixture(scope="module")
def forks() -> ForkServer:
    """A fork server with the trainer imported, torch on one thread."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    server = ForkServer(["torch", "torch._dynamo", "rf_dp_agents.training.cli", "rf_dp_agents.model"], env, REPO)
    yield server
    server.close()


def final_tensors(run_dir: Path) -> dict[str, torch.Tensor]:
    weights = {f"ema.{k}": v for k, v in load_file(run_dir / "last" / "model.safetensors").items()}
    state = load_file(run_dir / "last" / "training_state.safetensors")
    return {**weights, **state}


def test_sigkill_then_resume_equals_uninterrupted(tmp_path: Path) -> None:
    data = write_synthetic_dataset(tmp_path / "resume.zarr")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    straight, killed = tmp_path / "straight", tmp_path / "killed"

    done = subprocess.run(command(data, straight), cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]

    proc = subprocess.Popen(command(data, killed), cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        while not (killed / "last").is_symlink():  # the first snapshot (epoch 1 of 3) is in place
            assert proc.poll() is None, "the run ended before it could be killed"
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    killed_at = int(read_metrics(killed / "metrics.jsonl")[-1]["train/global_step"])
    assert 4 <= killed_at < 12  # killed after epoch 1's snapshot, before the end

    resumed = subprocess.run(command(data, killed, "--resume"), cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-4000:]
    assert "resumed from" in (killed / "train.log").read_text()

    a, b = final_tensors(straight), final_tensors(killed)
    rng_keys = {k for k in a if k.startswith("rng.")}
    assert a.keys() == b.keys() and any(k.startswith("optimizer.") for k in a) and rng_keys
    for key in a:
        assert torch.equal(a[key], b[key]), f"{key} differs after resume"
    loss = lambda d: [(r["train/global_step"], r["train/loss"]) for r in read_metrics(d / "metrics.jsonl") if "train/loss" in r]
    assert loss(straight) == loss(killed) and len(loss(killed)) == 12


SNAPSHOT_WRITER = """
import itertools, sys, torch
from pathlib import Path
from rf_dp_agents.training.state import save_training_state, write_snapshot
run, start = Path(sys.argv[1]), int(sys.argv[2])
for i in itertools.count(start):
    def fill(d, i=i):
        d.mkdir()
        save_training_state(d, {"w": torch.full((512, 1024), float(i))}, {"epoch": i})
    write_snapshot(run, "last", f"last-e{i:05d}", fill)
    print(i, flush=True)
"""


def test_sigkill_while_writing_snapshots_always_leaves_a_loadable_last(tmp_path: Path, forks: ForkServer) -> None:
    """Kill a process that rewrites ``last`` in a tight loop at random moments; ``last`` always loads whole."""
    rng = random.Random(0)
    run, newest = tmp_path / "run", -1
    writer = tmp_path / "writer.py"
    writer.write_text(SNAPSHOT_WRITER)
    for _ in range(5):
        proc = forks.start([writer, run, newest + 1], tmp_path)
        while not proc.stdout_path.is_file() or not proc.stdout_path.read_text().strip():  # at least one snapshot written by this process
            assert proc.poll() is None, proc.stderr
            time.sleep(0.01)
        time.sleep(rng.uniform(0.0, 0.3))
        os.kill(proc.pid, signal.SIGKILL)
        assert proc.wait(timeout=60) == -signal.SIGKILL
        tensors, meta = load_training_state(run / "last")
        assert torch.equal(tensors["w"], torch.full((512, 1024), float(meta["epoch"])))
        assert meta["epoch"] > newest
        newest = meta["epoch"]
    leftovers = [p.name for p in (run / "snapshots").iterdir()]
    assert len(leftovers) <= 3  # the live snapshot plus at most the one being written when killed


def _trained_steps(run_dir: Path) -> int:
    path = run_dir / "metrics.jsonl"
    records = read_metrics(path) if path.is_file() else []
    return max((int(r["train/global_step"]) for r in records if "train/loss" in r), default=0)


@pytest.mark.slow
@pytest.mark.timeout(2400)
def test_ten_sigkills_at_random_points_then_resume_equal_uninterrupted(tmp_path: Path, forks: ForkServer) -> None:
    """Ten SIGKILLs, each at a random moment of a training step of the process then running (seeded), each followed
    by --resume; the final weights, EMA, optimiser and RNG state equal an uninterrupted run's bitwise (CPU,
    --deterministic)."""
    rng = random.Random(10)
    data = write_synthetic_dataset(tmp_path / "resume.zarr")
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    epochs = ("--epochs", "8")
    done = forks.start(command(data, straight, *epochs)[1:], tmp_path)
    assert done.wait(timeout=900) == 0, done.stderr[-4000:]
    total = _trained_steps(straight)

    kills, resumed_at = 0, []
    for k in range(10):
        extra = (*epochs, "--resume") if k else epochs
        before = _trained_steps(killed)
        proc = forks.start(command(data, killed, *extra)[1:], tmp_path)
        try:
            while proc.poll() is None and _trained_steps(killed) <= before and _trained_steps(killed) < total:
                time.sleep(0.02)  # wait for this process to train (its first new step is logged)
            time.sleep(rng.uniform(0.0, 0.6))
            if proc.poll() is None:
                os.kill(proc.pid, signal.SIGKILL)
                kills += 1
        finally:
            proc.wait(timeout=60)
        resumed_at.append(before)
    assert kills == 10, f"only {kills} of the runs were still going when their kill came"

    final = forks.start(command(data, killed, *epochs, "--resume")[1:], tmp_path)
    assert final.wait(timeout=600) == 0, final.stderr[-4000:]
    assert len(set(resumed_at)) >= 3  # the kills fell at different points of the run
    a, b = final_tensors(straight), final_tensors(killed)
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), f"{key} differs after ten kills and resumes"
