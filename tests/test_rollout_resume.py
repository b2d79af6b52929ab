"""A CLI rollout killed with SIGKILL (one env worker, then the parent) and resumed with --resume (once stopped
early by --max-minutes) ends with the per-seed results of an uninterrupted run: same steps, success steps and
actions (a digest of every env action).

Real simulator (LiftBarrier-rf, 24x32 cameras, 6-step episodes), tiny checkpoints trained by the test.
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

import pytest

REPO = Path(__file__).resolve().parents[1]
TASK = "LiftBarrier-rf"
IMAGE_HW = (24, 32)
SEEDS = 8  # enough episodes that the kills land while both workers still have work


def command(ckpt: Path, out: Path, *extra: str) -> list[str]:
    return [
        sys.executable, str(REPO / "scripts" / "rollout.py"), "--task", TASK, "--checkpoint-dir", str(ckpt),
        "--num-episodes", str(SEEDS), "--seed", "30", "--max-episode-steps", "6", "--num-inference-steps", "2",
        "--no-progress", "--output", str(out), *extra,
    ]


def per_seed(doc: dict) -> dict[int, tuple]:
    return {ep["seed"]: (ep["steps"], ep["first_success_step"], ep["extra"]["action_digest"]) for ep in doc["episodes"]}


def _read(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):  # not written yet (it is replaced whole, never torn)
        return {}


def _env_workers(pid: int) -> list[int]:
    """The env worker processes of rollout process ``pid`` (spawned children, not the resource tracker)."""
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    return [int(c) for c in children if "spawn_main" in Path(f"/proc/{c}/cmdline").read_bytes().decode(errors="replace")]


def _wait(proc: subprocess.Popen, path: Path, done: int, timeout: float = 600.0) -> dict:
    """Wait until the results file holds ``done`` finished episodes."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        doc = _read(path)
        if len(doc.get("episodes", [])) >= done:
            return doc
        assert proc.poll() is None, f"the rollout ended early ({proc.returncode})"
        time.sleep(0.1)
    raise TimeoutError(f"{path}: fewer than {done} episodes after {timeout} s")


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory: pytest.TempPathFactory, agent_checkpoints) -> Path:
    return agent_checkpoints(tmp_path_factory.mktemp("checkpoints"), TASK, IMAGE_HW)


@pytest.mark.slow
def test_killed_worker_and_parent_then_resume_equal_an_uninterrupted_run(checkpoints: Path, tmp_path: Path) -> None:
    rng = random.Random(7)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    straight, killed = tmp_path / "straight.json", tmp_path / "killed.json"
    done = subprocess.run(command(checkpoints, straight), cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    want = per_seed(json.loads(straight.read_text()))
    assert sorted(want) == list(range(30, 30 + SEEDS))

    proc = subprocess.Popen(command(checkpoints, killed, "--num-envs", "2"), cwd=REPO, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        _wait(proc, killed, 1)  # both workers are up and running episodes
        time.sleep(rng.uniform(0.0, 1.5))
        victim = rng.choice(_env_workers(proc.pid))
        os.kill(victim, signal.SIGKILL)
        end = time.monotonic() + 600
        while not _read(killed).get("worker_deaths"):
            assert proc.poll() is None and time.monotonic() < end, "the worker's death was not recorded"
            time.sleep(0.1)
        doc = _wait(proc, killed, 2)
        time.sleep(rng.uniform(0.0, 1.0))
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    doc = _read(killed)
    (death,) = doc["worker_deaths"]
    assert death["cause"] == "killed by SIGKILL" and death["pid"] == victim and death["retried"] is True
    assert doc["complete"] is False and doc["pending_seeds"]
    assert per_seed(doc).items() <= want.items()  # whatever was finished before the kill is already right

    # --max-minutes: past the limit (6 ms) at once, so the resumed run starts only the first seed it lacks
    pending = doc["pending_seeds"]
    short = subprocess.run(command(checkpoints, killed, "--resume", "--max-minutes", "0.0001"), cwd=REPO, env=env,
                           capture_output=True, text=True, timeout=900)
    assert short.returncode == 0, short.stderr[-3000:]
    doc = _read(killed)
    assert doc["pending_seeds"] == pending[1:] and doc["complete"] == (len(pending) == 1)
    assert per_seed(doc).items() <= want.items() and pending[0] in per_seed(doc)
    if pending[1:]:  # the kill left more than the one seed the limit lets start
        assert f"--max-minutes 0.0001 reached: {len(pending) - 1} of {SEEDS} seeds not run" in short.stderr

    resumed = subprocess.run(command(checkpoints, killed, "--resume"), cwd=REPO, env=env, capture_output=True,
                             text=True, timeout=900)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming" in resumed.stderr and "episodes kept" in resumed.stderr
    final = json.loads(killed.read_text())
    assert final["complete"] is True and final["pending_seeds"] == [] and final["failed_seeds"] == []
    assert per_seed(final) == want
    assert final["resumed_episodes"] == len(doc["episodes"]) and final["worker_deaths"] == doc["worker_deaths"]
    assert final["summary"]["n_episodes"] == SEEDS


def test_resume_refuses_other_settings(checkpoints: Path, tmp_path: Path) -> None:
    from rf_dp_agents.rollout.config import RolloutConfig
    from rf_dp_agents.rollout.results import load_resume

    out = tmp_path / "r.json"
    cfg = RolloutConfig(task=TASK, checkpoint_dir=str(checkpoints), output=str(out), resume=True, max_episode_steps=6)
    out.write_text(json.dumps({"rollout_config": {**cfg.to_dict(), "max_episode_steps": 9}, "episodes": []}))
    with pytest.raises(ValueError, match=rf"{out}: cannot resume: it was made with max_episode_steps=9, this run has 6"):
        load_resume(cfg, {}, "episode seed")
    out.write_text(json.dumps({"rollout_config": cfg.to_dict(), "episodes": [], "noise": "policy seed"}))
    with pytest.raises(ValueError, match="its sampling noise came from the policy seed"):
        load_resume(cfg, {}, "episode seed")
    other = RolloutConfig(**{**cfg.to_dict(), "num_envs": 3, "num_episodes": 20, "video_dir": "v"})
    assert load_resume(other, {}, "policy seed") == ([], json.loads(out.read_text()))  # changes that keep results
