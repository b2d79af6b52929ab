"""Demonstration h5 files -> per-agent zarr datasets: round trip, CLI, and clear errors on bad input.

The h5 files are written by the real writer (``envs.demo_io``) from small synthetic episodes; the zarr
datasets are read back with the data layer's ``ReplayBuffer``.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

from envs.demo_io import EpisodeRecorder, list_episodes, read_actions, read_seed, write_episode
from envs.router import agent_state
from rf_dp_agents.data.convert import convert_agent, read_agent_episode, zarr_name
from rf_dp_agents.data.errors import DatasetError
from rf_dp_agents.data.replay_buffer import ReplayBuffer

REPO = Path(__file__).resolve().parents[1]
AGENTS = ("panda-0", "panda-1")
CAMERAS = ("head_camera_agent0", "head_camera_agent1", "head_camera_global")
H, W = 6, 8


def make_episode(seed: int, length: int) -> EpisodeRecorder:
    """A synthetic two-arm episode whose values encode (seed, step, agent, camera)."""
    rng = np.random.default_rng(seed)
    rec = EpisodeRecorder(agent_keys=AGENTS, cameras=CAMERAS)
    for t in range(length + 1):
        qpos = {k: rng.uniform(-1, 1, 9).astype(np.float32) for k in AGENTS}
        images = {c: np.full((H, W, 3), (seed * 50 + t * 3 + j) % 256, np.uint8) for j, c in enumerate(CAMERAS)}
        images = {c: img + np.arange(W, dtype=np.uint8)[None, :, None] for c, img in images.items()}
        rec.add_obs(qpos, images)
        if t < length:
            action = {k: rng.uniform(-1, 1, 8).astype(np.float32) for k in AGENTS}
            rec.add_step(action, {"success": np.array([t == length - 1]), "success_strict": np.array([False])})
    return rec


@pytest.fixture()
def demo_dir(tmp_path: Path) -> tuple[Path, dict[int, EpisodeRecorder]]:
    """Three episodes of lengths 5, 7 and 4 under demos/Toy-rf/."""
    task_dir = tmp_path / "demos" / "Toy-rf"
    recs = {seed: make_episode(seed, length) for seed, length in ((3, 5), (4, 7), (10, 4))}
    for seed, rec in recs.items():
        write_episode(task_dir / f"seed_{seed:06d}.h5", rec, env_id="Toy-rf", seed=seed, max_episode_steps=50)
    return task_dir, recs


def test_written_files_hold_the_episode(demo_dir):
    task_dir, recs = demo_dir
    assert sorted(p.name for p in task_dir.iterdir()) == [
        f"seed_{s:06d}.{ext}" for s in (3, 4, 10) for ext in ("h5", "json")
    ]
    refs = list_episodes(task_dir)
    assert [read_seed(r) for r in refs] == [3, 4, 10]
    actions = read_actions(refs[1])
    assert len(actions) == 7 and set(actions[0]) == set(AGENTS)
    np.testing.assert_array_equal(actions[2]["panda-1"], recs[4].actions["panda-1"][2])
    meta = json.loads((task_dir / "seed_000004.json").read_text())
    assert meta["env_info"]["env_id"] == "Toy-rf" and meta["env_info"]["max_episode_steps"] == 50
    episode = meta["episodes"][0]
    assert episode["episode_seed"] == 4 and episode["elapsed_steps"] == 7 and episode["success"] is True
    with h5py.File(refs[0].path) as f:
        assert f["traj_0/obs/sensor_data/head_camera_global/rgb"].shape == (6, H, W, 3)
        assert f["traj_0/success"].shape == (5,)


def test_convert_agent_round_trip(demo_dir, tmp_path):
    task_dir, recs = demo_dir
    refs = list_episodes(task_dir)
    out = convert_agent(refs, tmp_path / "zarr" / zarr_name("Toy-rf", 1, 3), agent_id=1, progress=False)
    assert out.name == "Toy-rf_Agent1_3.zarr"
    buf = ReplayBuffer.open(out)
    np.testing.assert_array_equal(buf.episode_ends, [5, 12, 16])
    img, state, action = buf["img"][:], buf["state"][:], buf["action"][:]
    assert img.shape == (16, 3, H, W) and img.dtype == np.uint8
    assert state.shape == (16, 8) and action.shape == (16, 8)
    rec = recs[4]
    expected_img = np.stack(rec.rgb["head_camera_agent1"][:7]).transpose(0, 3, 1, 2)
    np.testing.assert_array_equal(img[5:12], expected_img)
    np.testing.assert_allclose(state[5:12], agent_state(np.stack(rec.qpos["panda-1"][:7])))
    np.testing.assert_array_equal(action[5:12], np.stack(rec.actions["panda-1"]))
    assert not np.array_equal(action[5:12], np.stack(rec.actions["panda-0"]))


def test_state_source_action_and_global_camera(demo_dir, tmp_path):
    task_dir, recs = demo_dir
    refs = list_episodes(task_dir)
    out = convert_agent(
        refs, tmp_path / "a.zarr", agent_id=0, state_source="action", include_global_camera=True, progress=False
    )
    buf = ReplayBuffer.open(out)
    np.testing.assert_array_equal(buf["state"][:], buf["action"][:])
    glob = buf["img_head_camera_global"][:]
    assert glob.shape == (16, 3, H, W)
    np.testing.assert_array_equal(glob[:5], np.stack(recs[3].rgb["head_camera_global"][:5]).transpose(0, 3, 1, 2))


def _assert_nothing_left(out: Path) -> None:
    assert not out.exists()
    assert [p.name for p in out.parent.iterdir() if p.name.startswith(out.name)] == []


def test_truncated_file_is_named(demo_dir, tmp_path):
    task_dir, _ = demo_dir
    bad = task_dir / "seed_000004.h5"
    data = bad.read_bytes()
    bad.write_bytes(data[: len(data) // 2])
    with pytest.raises(DatasetError, match="seed_000004.h5.*truncated"):
        list_episodes(task_dir)


def test_truncated_dataset_is_named_and_nothing_written(demo_dir, tmp_path):
    task_dir, _ = demo_dir
    refs = list_episodes(task_dir)
    bad = task_dir / "seed_000010.h5"
    data = bad.read_bytes()
    bad.write_bytes(data[: int(len(data) * 0.8)])
    out = tmp_path / "zarr" / "x.zarr"
    out.parent.mkdir()
    with pytest.raises(DatasetError, match="seed_000010.h5"):
        convert_agent(refs, out, agent_id=0, progress=False)
    _assert_nothing_left(out)


@pytest.mark.parametrize(
    ("edit", "pattern"),
    [
        ("drop_camera", r"seed_000004\.h5:traj_0.*'obs/sensor_data/head_camera_agent1/rgb' missing"),
        ("drop_agent", r"seed_000004\.h5:traj_0.*'actions/panda-1' missing"),
        ("short_state", r"seed_000004\.h5:traj_0.*'obs/agent/panda-1/state' has 3 steps.*'actions/panda-1' has 7"),
        ("nan_action", r"seed_000004\.h5:traj_0.*action of agent panda-1 holds NaN"),
    ],
)
def test_bad_episode_is_named_and_nothing_written(demo_dir, tmp_path, edit, pattern):
    task_dir, _ = demo_dir
    with h5py.File(task_dir / "seed_000004.h5", "a") as f:
        g = f["traj_0"]
        if edit == "drop_camera":
            del g["obs/sensor_data/head_camera_agent1"]
        elif edit == "drop_agent":
            del g["actions/panda-1"]
        elif edit == "short_state":
            data = g["obs/agent/panda-1/state"][:3]
            del g["obs/agent/panda-1/state"]
            g["obs/agent/panda-1/state"] = data
        elif edit == "nan_action":
            g["actions/panda-1"][2, 3] = np.nan
    out = tmp_path / "zarr" / "y.zarr"
    out.parent.mkdir()
    with pytest.raises(DatasetError, match=pattern):
        convert_agent(list_episodes(task_dir), out, agent_id=1, progress=False)
    _assert_nothing_left(out)


def test_agent_out_of_range_is_named(demo_dir):
    refs = list_episodes(demo_dir[0])
    with pytest.raises(DatasetError, match=r"seed_000003\.h5:traj_0: agent 2 missing .*panda-0"):
        read_agent_episode(refs[0], agent_id=2)


def test_write_episode_rejects_mismatched_lengths(tmp_path):
    rec = make_episode(0, 3)
    rec.qpos["panda-0"].pop()
    target = tmp_path / "ep.h5"
    with pytest.raises(ValueError, match="observations for 3 actions"):
        write_episode(target, rec, env_id="Toy-rf", seed=0)
    assert list(tmp_path.iterdir()) == []


def test_convert_cli(demo_dir, tmp_path):
    task_dir, _ = demo_dir
    demos = task_dir.parent
    out = tmp_path / "zarr"
    cmd = [sys.executable, str(REPO / "scripts" / "convert_to_zarr.py"), "--task", "Toy-rf", "--demos", str(demos)]
    done = subprocess.run(cmd + ["--out", str(out), "--all-agents", "--num", "2"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert sorted(p.name for p in out.iterdir()) == ["Toy-rf_Agent0_2.zarr", "Toy-rf_Agent1_2.zarr"]
    np.testing.assert_array_equal(ReplayBuffer.open(out / "Toy-rf_Agent0_2.zarr").episode_ends, [5, 12])
    serial = subprocess.run(cmd + ["--out", str(tmp_path / "serial"), "--all-agents", "--num", "2", "--num-procs", "1"],
                            capture_output=True, text=True)
    assert serial.returncode == 0, serial.stderr
    assert done.stdout == serial.stdout.replace(str(tmp_path / "serial"), str(out))  # same report, agent order kept
    for i in range(2):  # agents converted in two processes equal the one-process conversion
        a = ReplayBuffer.open(out / f"Toy-rf_Agent{i}_2.zarr")
        b = ReplayBuffer.open(tmp_path / "serial" / f"Toy-rf_Agent{i}_2.zarr")
        for key in ("img", "state", "action"):
            np.testing.assert_array_equal(a[key], b[key])
    too_many = subprocess.run(cmd + ["--out", str(out), "--num", "9"], capture_output=True, text=True)
    assert too_many.returncode == 2 and "--num 9 asked but only 3 episodes exist" in too_many.stderr
