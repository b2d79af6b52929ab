"""Two gloo DDP processes (torchrun, started by ``--gpus 2``) train like one process with the same global batch."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from safetensors.torch import load_file

from rf_dp_agents.training.cli import main
from rf_dp_agents.training.metrics import read_metrics
from rf_dp_agents.data.synthetic import write_synthetic_dataset

REPO = Path(__file__).resolve().parents[1]
COMMON = ["--preset", "tiny", "--device", "cpu", "--epochs", "2", "--batch-size", "4", "--no-progress"]


def curve(run_dir: Path, key: str) -> list[float]:
    return [r[key] for r in read_metrics(run_dir / "metrics.jsonl") if key in r]


def run_pair(tmp_path: Path, args: list[str]) -> tuple[Path, Path]:
    """Train on a synthetic dataset with 2 gloo ranks and with 1 process accumulating 2 micro-batches.

    Both runs have the same global batch (the two accumulated micro-batches stand for the two ranks); returns
    the two run directories (DDP, one process).
    """
    data = write_synthetic_dataset(tmp_path / "ddp.zarr")
    ddp_dir, one_dir = tmp_path / "ddp", tmp_path / "one"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "train.py"), *args, "--zarr-path", str(data),
         "--output-dir", str(ddp_dir), "--gpus", "2", "--dist-timeout-s", "120"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "2 process(es)" in (ddp_dir / "train.log").read_text()
    assert main([*args, "--zarr-path", str(data), "--output-dir", str(one_dir), "--grad-accum-steps", "2"]) == 0
    return ddp_dir, one_dir


def test_two_gloo_processes_match_one_process(tmp_path: Path) -> None:
    ddp_dir, one_dir = run_pair(tmp_path, COMMON)

    ddp_loss, one_loss = curve(ddp_dir, "train/loss"), curve(one_dir, "train/loss")
    assert len(ddp_loss) == len(one_loss) == 8  # 39 windows // 8 per global batch = 4 steps x 2 epochs
    np.testing.assert_allclose(ddp_loss, one_loss, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(curve(ddp_dir, "val/loss"), curve(one_dir, "val/loss"), rtol=1e-4)
    np.testing.assert_allclose(curve(ddp_dir, "val/action_mse"), curve(one_dir, "val/action_mse"), rtol=1e-3)
    np.testing.assert_allclose(curve(ddp_dir, "train/grad_norm"), curve(one_dir, "train/grad_norm"), rtol=1e-3)
    # The loss curve is not flat: the comparison above compares real training.
    assert max(one_loss) - min(one_loss) > 1e-3


def test_first_step_gradient_of_two_ranks_equals_one_process(tmp_path: Path) -> None:
    """The all-reduced gradient of one optimiser step equals the one-process gradient of the same global batch.

    Weights cannot be compared this tightly: AdamW moves every weight by about the learning rate whatever the
    gradient's size, so rounding differences in near-zero gradient entries change weights by a whole step. The
    first moment AdamW stores after its first step is exactly (1 - beta1) times the gradient, so it is compared.
    """
    # 2 ranks x 16 windows of the 39: one step; the warm-up's first learning rate is 0, so the weights stay put.
    ddp_dir, one_dir = run_pair(tmp_path, [*COMMON, "--epochs", "1", "--batch-size", "16"])
    assert len(curve(ddp_dir, "train/loss")) == len(curve(one_dir, "train/loss")) == 1
    a = load_file(ddp_dir / "last" / "training_state.safetensors")
    b = load_file(one_dir / "last" / "training_state.safetensors")
    moments = sorted(k for k in b if k.startswith("optimizer.state.") and k.endswith(".exp_avg"))
    assert len(moments) > 100  # one per parameter tensor
    assert a.keys() == b.keys()
    for key in moments:
        grad_ddp, grad_one = a[key].numpy(), b[key].numpy()
        scale = float(np.abs(grad_one).max())
        assert scale > 0, f"{key}: zero gradient"
        # Summation order alone separates the two (seen: 1e-5 of the tensor's largest entry).
        np.testing.assert_allclose(grad_ddp, grad_one, rtol=0, atol=1e-4 * scale, err_msg=key)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_dead_rank_stops_the_other(tmp_path: Path) -> None:
    """Two ranks started by hand (as a multi-node launcher would); SIGKILL rank 1 and rank 0 must fail, not hang."""
    data = write_synthetic_dataset(tmp_path / "dead.zarr")
    out = tmp_path / "dead"
    base = {**os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port()), "WORLD_SIZE": "2",
            "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, str(REPO / "scripts" / "train.py"), *COMMON, "--zarr-path", str(data), "--output-dir",
           str(out), "--epochs", "100", "--log-flush-every", "1", "--dist-timeout-s", "60"]
    ranks = [
        subprocess.Popen(cmd, cwd=REPO, env={**base, "RANK": str(r), "LOCAL_RANK": str(r)},
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        for r in (0, 1)
    ]
    try:
        metrics = out / "metrics.jsonl"
        while not (metrics.exists() and any("train/loss" in r for r in read_metrics(metrics))):
            assert ranks[0].poll() is None and ranks[1].poll() is None, "a rank ended before training started"
            time.sleep(0.1)
        os.kill(ranks[1].pid, signal.SIGKILL)
        _, err = ranks[0].communicate(timeout=300)  # the timeout is only a guard against a hang
    finally:
        for proc in ranks:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert ranks[0].returncode not in (0, None)
    assert "error: rank 0 stopped" in err and "another rank died" in err
