"""Rollout end to end on the CPU simulator: a tiny trained checkpoint pair acts in LiftBarrier-rf.

Checks the results JSON (every metric, seeds, checkpoints, configs, versions), the episode video (read
back: frames = steps + 1, the reset frame included), TOPP execution's planning counts, and the errors for
a missing checkpoint and a camera size that does not match the policies.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import imageio.v2 as imageio
import pytest

from rf_dp_agents.rollout.config import RolloutConfig
from rf_dp_agents.rollout.metrics import summarize, wilson_interval
from rf_dp_agents.rollout.video import count_frames

REPO = Path(__file__).resolve().parents[1]
TASK = "LiftBarrier-rf"
IMAGE_HW = (48, 64)
MAX_STEPS = 8
@pytest.fixture(scope="module")
def checkpoint_root(tmp_path_factory: pytest.TempPathFactory, agent_checkpoints) -> Path:
    return agent_checkpoints(tmp_path_factory.mktemp("checkpoints"), TASK, IMAGE_HW)


@pytest.fixture(scope="module")
def direct_run(checkpoint_root: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[RolloutConfig, dict]:
    from rf_dp_agents.rollout.runner import run_rollout

    out = tmp_path_factory.mktemp("rollout")
    cfg = RolloutConfig(
        task=TASK,
        checkpoint_dir=str(checkpoint_root),
        num_episodes=1,
        seed=3,
        max_episode_steps=MAX_STEPS,
        record_video=True,
        video_dir=str(out / "videos"),
        output=str(out / "results.json"),
        num_inference_steps=2,
        progress=False,
    )
    return cfg, run_rollout(cfg)


def test_results_json_has_every_metric(direct_run: tuple[RolloutConfig, dict], checkpoint_root: Path) -> None:
    cfg, returned = direct_run
    doc = json.loads(Path(cfg.output).read_text())
    assert doc == json.loads(json.dumps(returned))
    assert not [p.name for p in Path(cfg.output).parent.iterdir() if ".tmp-" in p.name]
    assert doc["task"] == TASK and doc["num_agents"] == 2 and doc["execution"] == "direct"
    assert doc["seeds"] == [3]
    assert doc["camera_size"] == [IMAGE_HW[1], IMAGE_HW[0]]  # from the policies' image_shape, no flags given
    assert doc["success_rules"] == ["success", "success_strict"]
    (episode,) = doc["episodes"]
    assert episode["seed"] == 3 and 1 <= episode["steps"] <= MAX_STEPS
    assert episode["extra"]["policy_steps"] == episode["steps"]  # direct execution: one env step per action
    conditions = episode["extra"]["conditions"]  # the parts of LiftBarrier-rf's strict rule, counted per step
    assert set(conditions) == {"is_grasped_0", "is_grasped_1", "is_level"}
    for flag in conditions.values():
        assert 0 <= flag["steps_held"] <= episode["steps"] and isinstance(flag["at_end"], bool)
    assert conditions["is_level"]["steps_held"] > 0  # the bar starts flat on the table
    summary = doc["summary"]
    for rule in ("success", "success_strict"):
        s = summary["rules"][rule]
        assert s["n"] == 1 and s["successes"] == int(episode["first_success_step"][rule] is not None)
        assert s["ci95"] == pytest.approx(list(wilson_interval(s["successes"], 1)))
        assert s["success_rate"] == s["successes"]
        assert set(s["episode_length"]) == {"mean", "median", "min", "max"}
        assert set(s["episode_length_successful"]) == {"mean", "median", "min", "max"}
    if episode["first_success_step"]["success"] is None:
        assert episode["steps"] == MAX_STEPS
        assert summary["episode_length"]["mean"] == MAX_STEPS and summary["episode_length"]["median"] == MAX_STEPS
    assert summary["ci95"] == summary["rules"]["success"]["ci95"]
    assert "motion_planning" not in summary
    for i in range(2):
        info = doc["policies"][f"panda-{i}"]
        assert info["checkpoint"] == str(checkpoint_root / f"{TASK}_Agent{i}" / "best")
        assert info["config"]["image_shape"] == [3, *IMAGE_HW]
        assert info["config"]["num_inference_steps"] == 2  # the override reached the policy
        assert info["metadata"]["train_steps"] == 3
    assert doc["versions"]["mani_skill"] and doc["versions"]["torch"] and doc["versions"]["python"]
    assert doc["rollout_config"]["max_episode_steps"] == MAX_STEPS and doc["max_episode_steps"] == MAX_STEPS
    assert doc["timing"]["wall_seconds"] > 0 and doc["timing"]["env_steps_per_second"] > 0
    assert doc["timing"]["env_steps_per_second_per_env"] >= doc["timing"]["env_steps_per_second"]


def test_video_is_readable_with_one_frame_per_step(direct_run: tuple[RolloutConfig, dict]) -> None:
    cfg, doc = direct_run
    (episode,) = doc["episodes"]
    path = Path(episode["video"])
    assert path == Path(cfg.video_dir) / TASK / f"{TASK}_seed3.mp4"
    assert count_frames(path) == episode["steps"] + 1  # the reset frame, then one per env step
    frame = imageio.get_reader(str(path)).get_data(0)
    assert frame.ndim == 3 and frame.shape[2] == 3
    assert frame.shape[1] >= 3 * IMAGE_HW[1]  # global + two agent cameras side by side
    assert frame.std() > 5  # an actual rendered scene, not a blank frame


def test_topp_execution_reports_planning(checkpoint_root: Path, tmp_path: Path) -> None:
    from rf_dp_agents.rollout.runner import EvalSession, checkpoint_paths

    cfg = RolloutConfig(
        task=TASK, checkpoint_dir=str(checkpoint_root), execution="topp", max_episode_steps=6,
        num_inference_steps=2, output=str(tmp_path / "r.json"), progress=False,
    )
    session = EvalSession(cfg, checkpoint_paths(cfg, 2), num_envs=1)
    try:
        (result,) = session.run_batch([11])
    finally:
        session.close()
    assert result.steps == 6
    assert 1 <= result.extra["policy_steps"] <= 6  # TOPP spreads one policy action over one or more env steps
    # every policy action of every agent is re-timed once; a 6-step episode needs at least one per agent
    assert result.planning_calls >= 2 and result.planning_calls % 2 == 0
    assert 0 <= result.planning_failures <= result.planning_calls
    mp = summarize([result], session.rules, topp=True)["motion_planning"]
    assert mp["calls"] == result.planning_calls
    assert mp["failure_rate"] == pytest.approx(result.planning_failures / result.planning_calls)


def test_global_camera_renders_only_for_recorded_episodes(checkpoint_root: Path, tmp_path: Path) -> None:
    """The global camera feeds no policy here, only videos: batches that record none pause it."""
    from envs.tasks.base import GLOBAL_CAMERA
    from rf_dp_agents.rollout.runner import EvalSession, checkpoint_paths

    cfg = RolloutConfig(
        task=TASK, checkpoint_dir=str(checkpoint_root), seed=3, record_video=True, video_episodes=1,
        video_dir=str(tmp_path / "videos"), max_episode_steps=2, num_inference_steps=2,
        output=str(tmp_path / "r.json"), progress=False,
    )
    session = EvalSession(cfg, checkpoint_paths(cfg, 2), num_envs=1)
    try:
        assert session.video_only_cameras == [GLOBAL_CAMERA]
        (unrecorded,) = session.run_batch([4])  # seed 4 is past --video-episodes 1
        assert unrecorded.video is None and session.env.unwrapped.paused_cameras == {GLOBAL_CAMERA}
        (recorded,) = session.run_batch([3])
        assert recorded.video is not None and session.env.unwrapped.paused_cameras == frozenset()
    finally:
        session.close()
    frame = imageio.get_reader(recorded.video).get_data(0)
    assert frame.shape[1] >= 3 * IMAGE_HW[1]  # the global camera is in the video
    assert unrecorded.steps == recorded.steps == 2


def test_worker_processes_run_every_seed(checkpoint_root: Path, tmp_path: Path) -> None:
    from rf_dp_agents.rollout.runner import run_rollout

    cfg = RolloutConfig(
        task=TASK, checkpoint_dir=str(checkpoint_root), num_episodes=3, num_envs=2, seed=20, max_episode_steps=3,
        num_inference_steps=2, output=str(tmp_path / "r.json"), progress=False,
    )
    doc = run_rollout(cfg)
    assert [ep["seed"] for ep in doc["episodes"]] == [20, 21, 22]
    assert all(ep["steps"] == 3 and ep["video"] is None for ep in doc["episodes"])
    assert doc["summary"]["rules"]["success_strict"]["n"] == 3
    assert doc["summary"]["env_steps"] == 9


def test_missing_checkpoint_names_agent_and_path(checkpoint_root: Path, tmp_path: Path) -> None:
    from rf_dp_agents.rollout.runner import run_rollout

    shutil.copytree(checkpoint_root / f"{TASK}_Agent0", tmp_path / f"{TASK}_Agent0")
    cfg = RolloutConfig(task=TASK, checkpoint_dir=str(tmp_path), output=str(tmp_path / "r.json"), progress=False)
    with pytest.raises(FileNotFoundError) as err:
        run_rollout(cfg)
    message = str(err.value)
    assert "agent 1 (panda-1)" in message
    assert str(tmp_path / f"{TASK}_Agent1") in message
    assert not (tmp_path / "r.json").exists()


def test_checkpoint_epoch_picks_the_kept_weights(tmp_path: Path, tiny_checkpoint) -> None:
    from rf_dp_agents.rollout.runner import checkpoint_paths

    for i in range(2):
        tiny_checkpoint(tmp_path / f"{TASK}_Agent{i}" / "epochs" / "epoch-00020", image_hw=IMAGE_HW, seed=i)
    cfg = RolloutConfig(task=TASK, checkpoint_dir=str(tmp_path), checkpoint_epoch=20)
    assert checkpoint_paths(cfg, 2) == [tmp_path / f"{TASK}_Agent{i}" / "epochs" / "epoch-00020" for i in range(2)]
    with pytest.raises(FileNotFoundError, match=r"no weights of epoch 30 for agent 0 .* epochs kept in .*: \[20\]"):
        checkpoint_paths(RolloutConfig(task=TASK, checkpoint_dir=str(tmp_path), checkpoint_epoch=30), 2)


def test_agent_policies_take_the_sampling_overrides(tmp_path: Path, tiny_checkpoint) -> None:
    from rf_dp_agents.rollout.runner import load_agent_policies

    paths = [tiny_checkpoint(tmp_path / f"agent{i}", image_hw=IMAGE_HW, seed=i) for i in range(2)]
    default = load_agent_policies(RolloutConfig(task=TASK, device="cpu"), paths)
    assert [(p.model.compile_graphs, p.model.fused_graphs, p.model.bf16_graphs) for p in default] == [
        (True, True, False)] * 2
    cfg = RolloutConfig(task=TASK, device="cpu", sampler="ddim", num_inference_steps=3, compile_graphs=False,
                        fused_graphs=False, bf16_graphs=True)
    policies = load_agent_policies(cfg, paths)
    got = [(p.config.sampler, p.config.num_inference_steps, p.model.compile_graphs, p.model.fused_graphs,
            p.model.bf16_graphs) for p in policies]
    assert got == [("ddim", 3, False, False, True)] * 2


def test_cli_reports_missing_checkpoint(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "rollout.py"), "--task", TASK, "--checkpoint-dir", str(tmp_path),
         "--output", str(tmp_path / "r.json")],
        capture_output=True, text=True, cwd=tmp_path, timeout=300,
    )
    assert proc.returncode != 0
    assert "agent 0 (panda-0)" in proc.stderr and str(tmp_path / f"{TASK}_Agent0") in proc.stderr


def test_camera_size_must_match_the_policies(checkpoint_root: Path, tmp_path: Path) -> None:
    from rf_dp_agents.rollout.runner import run_rollout

    cfg = RolloutConfig(
        task=TASK, checkpoint_dir=str(checkpoint_root), camera_width=32, camera_height=32,
        output=str(tmp_path / "r.json"), progress=False,
    )
    with pytest.raises(ValueError, match="32x32 differ from the 64x48"):
        run_rollout(cfg)


def test_unknown_task_bad_config_and_success_rules() -> None:
    from rf_dp_agents.rollout.runner import episode_cap, success_rules, task_num_arms

    assert task_num_arms(TASK) == 2
    import gymnasium as gym

    assert episode_cap(TASK, None) == gym.spec(TASK).max_episode_steps and episode_cap(TASK, 9) == 9
    info = {"success_strict": True, "is_level": False, "success": False, "success_both": True}
    assert success_rules(info) == ["success", "success_both", "success_strict"]
    with pytest.raises(ValueError, match="no 'success' flag"):
        success_rules({"is_level": True})

    with pytest.raises(ValueError, match="unknown task 'NoSuchTask-rf'"):
        task_num_arms("NoSuchTask-rf")
    with pytest.raises(ValueError, match="num_episodes"):
        RolloutConfig(task=TASK, num_episodes=0)
    with pytest.raises(ValueError, match="camera_width and camera_height"):
        RolloutConfig(task=TASK, camera_width=64)


def test_unread_frames_are_skipped_without_changing_the_actions(checkpoint_root: Path, tmp_path: Path) -> None:
    """With To 2 and 8 actions per chunk the models read 2 frames of every 8: the others are not rendered, and the
    actions (deterministic sampling) are those of a run that renders every step."""
    from rf_dp_agents.rollout.runner import EvalSession, checkpoint_paths

    runs = {}
    for skip in (True, False):
        cfg = RolloutConfig(task=TASK, checkpoint_dir=str(checkpoint_root), seed=5, max_episode_steps=24,
                            num_inference_steps=2, deterministic=True, skip_unread_frames=skip,
                            output=str(tmp_path / f"r{skip}.json"), progress=False)
        session = EvalSession(cfg, checkpoint_paths(cfg, 2), num_envs=1)
        try:
            (runs[skip],) = session.run_batch([5])
            assert session.env.unwrapped.paused_cameras == set(session.video_only_cameras)  # restored after
        finally:
            session.close()
    skipped, every = runs[True], runs[False]
    assert every.steps == skipped.steps == 24 and every.first_success_step == skipped.first_success_step
    assert skipped.extra["action_digest"] == every.extra["action_digest"]
    assert every.extra["policy_frames_rendered"] == 25  # the reset and every step
    # queries at steps 0, 8, 16 (and 24, past the cap) read frames 7-8, 15-16, 23-24, and the reset's
    assert skipped.extra["policy_frames_rendered"] == 7
