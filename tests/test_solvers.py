"""Motion-planned demonstrations on the real simulator (CPU): solvers succeed, replays reproduce them,
the planner grades the gripper and holds waiting arms, and the generate -> convert CLIs give a dataset.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest

from envs.demo_io import list_episodes
from envs.solvers import SOLVERS
from envs.solvers.planner import GRIPPER_STEP, GraspFailed, PlanningFailed, lifted, resample_path, success_flag
from envs.solvers.runner import DemoRunner
from rf_dp_agents.data.convert import read_agent_episode
from rf_dp_agents.data.errors import DatasetError
from rf_dp_agents.data.replay_buffer import ReplayBuffer

REPO = Path(__file__).resolve().parents[1]
AGENT_CAMERAS = ("head_camera_agent0", "head_camera_agent1")


@pytest.fixture(scope="module")
def lift_runner() -> DemoRunner:
    runner = DemoRunner("LiftBarrier-rf", camera_width=32, camera_height=24, cameras=AGENT_CAMERAS)
    yield runner
    runner.close()


def test_resample_path_keeps_ends_and_order():
    path = np.array([[0.0, 1.0], [1.0, 3.0], [3.0, 4.0]])
    out = resample_path(path, 7)
    assert out.shape == (7, 2)
    np.testing.assert_allclose(out[0], path[0])
    np.testing.assert_allclose(out[-1], path[-1])
    assert np.all(np.diff(out[:, 0]) > 0)


@pytest.mark.parametrize("seed", [0, 1])
def test_lift_barrier_demo_succeeds_and_replays(lift_runner, seed):
    result, actions = lift_runner.plan(seed)
    assert result.outcome == "success", result.message
    assert result.success_strict is True
    assert 0 < len(actions) <= lift_runner.max_episode_steps
    final_qpos = [arm.measured_qpos() for arm in lift_runner.planner.arms]

    recorder, info = lift_runner.replay(seed, actions, render=False)
    assert success_flag(info) and success_flag(info, "success_strict")
    assert recorder.length == len(actions)
    for key, qpos in zip(lift_runner.planner.agent_keys, final_qpos):
        np.testing.assert_allclose(recorder.qpos[key][-1], qpos, atol=1e-5)


def test_gripper_commands_are_graded(lift_runner):
    _, actions = lift_runner.plan(0)
    for key in lift_runner.planner.agent_keys:
        grip = np.array([a[key][7] for a in actions])
        assert grip[0] == pytest.approx(1.0) and grip.min() == pytest.approx(-1.0)
        assert np.abs(np.diff(grip)).max() <= GRIPPER_STEP + 1e-6
        closing = np.flatnonzero((grip < 1.0 - 1e-6) & (grip > -1.0 + 1e-6))
        assert len(closing) == 19


def test_waiting_arm_holds_its_targets(lift_runner):
    planner = lift_runner.planner
    lift_runner.plan_env.reset(seed=3)
    planner.begin_episode()
    start = planner.arms[1].target.copy()
    planner.move({0: lifted(planner.arms[0].tcp_pose(), 0.05)})
    assert planner.elapsed_steps > 5
    waiting = np.stack([a["panda-1"][:7] for a in planner.actions])
    np.testing.assert_array_equal(waiting, np.repeat(start[None].astype(np.float32), len(waiting), axis=0))
    moving = np.stack([a["panda-0"][:7] for a in planner.actions])
    assert np.abs(moving[-1] - moving[0]).max() > 0.01


def test_failures_name_the_arm(lift_runner):
    planner = lift_runner.planner
    lift_runner.plan_env.reset(seed=0)
    planner.begin_episode()
    with pytest.raises(PlanningFailed, match=r"arm 1 \(panda-1\)"):
        planner.plan(1, lifted(planner.arms[1].tcp_pose(), 2.0))
    with pytest.raises(GraspFailed, match=r"arm 0 \(panda-0\) is not holding barrier"):
        planner.check_grasp(0, lift_runner.plan_env.unwrapped.barrier)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("task", "seed"),
    [("StackCube-rf", 0), ("TwoRobotsStackCube-rf", 0), ("ThreeRobotsStackCube-rf", 0), ("LongPipelineDelivery-rf", 0)],
)
def test_every_task_has_a_working_solver(task, seed):
    assert task in SOLVERS
    runner = DemoRunner(task)
    try:
        result, actions = runner.plan(seed)
        assert result.outcome == "success", result.message
        assert result.success_strict is True
        _, info = runner.replay(seed, actions, env=runner.plan_env, render=False)
        assert success_flag(info) and success_flag(info, "success_strict")
    finally:
        runner.close()


def _run(script: str, *args: str) -> subprocess.CompletedProcess:
    done = subprocess.run(
        [sys.executable, str(REPO / "scripts" / script), *args], capture_output=True, text=True, timeout=900
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done


@pytest.mark.slow
def test_generate_rerecord_and_convert_cli(tmp_path):
    """Plan without images, re-record the episode with two tiny cameras, convert both agents."""
    state_dir, demos, zarr_dir = tmp_path / "state", tmp_path / "demos", tmp_path / "zarr"
    _run("generate_data.py", "--task", "LiftBarrier-rf", "--num", "1", "--seed", "1", "--no-render", "--out", str(state_dir))
    plain = state_dir / "LiftBarrier-rf" / "seed_000001.h5"
    with pytest.raises(DatasetError, match=r"seed_000001\.h5:traj_0.*'obs/sensor_data/head_camera_agent0/rgb' missing"):
        read_agent_episode(list_episodes(plain)[0], agent_id=0)

    _run(
        "generate_data.py", "--task", "LiftBarrier-rf", "--num", "1", "--replay-from", str(plain.parent),
        "--camera-width", "32", "--camera-height", "24", "--cameras", *AGENT_CAMERAS, "--out", str(demos),
        "--save-video",
    )
    task_dir = demos / "LiftBarrier-rf"
    meta = json.loads((task_dir / "seed_000001.json").read_text())
    episode = meta["episodes"][0]
    assert episode["success"] is True and episode["success_strict"] is True
    assert episode["cameras"] == list(AGENT_CAMERAS) and episode["episode_seed"] == 1
    report = json.loads((task_dir / "generation_report.json").read_text())
    assert report["kept"] == 1 and report["attempts"] == 1 and report["mode"] == "replay"
    assert not [p for p in task_dir.iterdir() if p.name.startswith(".")]
    frames = iio.imread(task_dir / "videos" / "seed_000001.mp4")
    assert frames.shape == (episode["elapsed_steps"] + 1, 24, 64, 3)

    _run("convert_to_zarr.py", "--task", "LiftBarrier-rf", "--all-agents", "--demos", str(demos), "--out", str(zarr_dir))
    length = episode["elapsed_steps"]
    for i in (0, 1):
        buf = ReplayBuffer.open(zarr_dir / f"LiftBarrier-rf_Agent{i}_1.zarr")
        np.testing.assert_array_equal(buf.episode_ends, [length])
        img = buf["img"][:]
        assert img.shape == (length, 3, 24, 32) and img.dtype == np.uint8
        assert img.std() > 5
        assert buf["state"].shape == (length, 8) and buf["action"].shape == (length, 8)
        assert buf["action"][:][:, 7].min() == pytest.approx(-1.0)
