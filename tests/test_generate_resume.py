"""generate_data.py killed with SIGKILL and resumed with --resume keeps the episodes an uninterrupted run keeps.

Real planner and simulator, state-only episodes (--no-render) of LiftBarrier-rf; the kill comes at a random
moment after the first attempt is recorded (seeded); the episodes' actions must match bitwise.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np

REPO = Path(__file__).resolve().parents[1]
TASK = "LiftBarrier-rf"


def command(out: Path, *extra: str) -> list[str]:
    return [sys.executable, str(REPO / "scripts" / "generate_data.py"), "--task", TASK, "--num", "3", "--seed", "5",
            "--no-render", "--out", str(out), *extra]


def actions(h5: Path) -> dict[str, np.ndarray]:
    with h5py.File(h5, "r") as f:
        group = f["traj_0"]
        out: dict[str, np.ndarray] = {}
        group.visititems(lambda name, node: out.__setitem__(name, node[()]) if isinstance(node, h5py.Dataset) else None)
        return out


def outcomes(report: dict) -> list[tuple]:
    return [(a["seed"], a["outcome"], a["steps"]) for a in report["attempts_detail"]]


def test_sigkill_then_resume_keeps_the_uninterrupted_runs_episodes(tmp_path: Path) -> None:
    rng = random.Random(3)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    done = subprocess.run(command(straight), cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    want = json.loads((straight / TASK / "generation_report.json").read_text())
    assert want["complete"] is True and len(want["kept_seeds"]) == 3

    report = killed / TASK / "generation_report.json"
    proc = subprocess.Popen(command(killed), cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    try:
        end = time.monotonic() + 600
        while not (report.is_file() and json.loads(report.read_text())["attempts"] >= 1):
            assert proc.poll() is None and time.monotonic() < end, "the run ended before it could be killed"
            time.sleep(0.05)
        time.sleep(rng.uniform(0.0, 2.0))
        os.killpg(proc.pid, signal.SIGKILL)  # the parent and its planner workers
    finally:
        proc.wait(timeout=60)
    partial = json.loads(report.read_text())
    assert proc.returncode == -signal.SIGKILL and partial["complete"] is False
    assert outcomes(partial) == outcomes(want)[: len(outcomes(partial))]

    resumed = subprocess.run(command(killed, "--resume"), cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"--resume: {partial['attempts']} seeds already tried" in resumed.stderr
    got = json.loads(report.read_text())
    assert got["complete"] is True and got["kept_seeds"] == want["kept_seeds"] and outcomes(got) == outcomes(want)
    assert got["attempts"] == want["attempts"] and got["wall_seconds"] > partial["wall_seconds"]
    task_dir = killed / TASK
    assert not [p.name for p in task_dir.iterdir() if p.name.startswith(".")]  # no staging or temporary files
    assert sorted(p.name for p in task_dir.glob("*.h5")) == sorted(p.name for p in (straight / TASK).glob("*.h5"))
    for h5 in (straight / TASK).glob("*.h5"):
        a, b = actions(h5), actions(task_dir / h5.name)
        assert a.keys() == b.keys()
        for key in a:
            np.testing.assert_array_equal(a[key], b[key], err_msg=f"{h5.name}:{key}")
