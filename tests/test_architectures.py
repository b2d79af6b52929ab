"""The paper's four multi-agent architectures end to end on the CPU, from one motion-planned LiftBarrier-rf demo.

Real parts: a demo planned with mplib and rendered at 64x48, zarr datasets converted from its h5 file, the tiny
preset trained for one epoch through the trainer's command line, checkpoints on disk, rollouts in the simulator.
Checks: each architecture converts, trains, remembers itself in its checkpoint and rolls out with no flag; a shared
dataset equals the per-agent datasets side by side; a shared policy's action reaches each arm's slot, once per chunk
for all arms; a dataset, model config or checkpoint for another architecture or arm count is a clear error.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest

from rf_dp_agents.architecture import Architecture, dataset_record, policy_record
from rf_dp_agents.checkpoint import load_policy, read_checkpoint_config
from rf_dp_agents.data.convert import convert_agent, convert_shared, list_episodes
from rf_dp_agents.data.replay_buffer import ReplayBuffer
from rf_dp_agents.rollout.config import RolloutConfig
from rf_dp_agents.training.cli import parse_args
from rf_dp_agents.training.jobs import plan_jobs
from task_checks import CAM_H, CAM_W, plan_demo

REPO = Path(__file__).resolve().parents[1]
TASK = "LiftBarrier-rf"
AGENTS = ["panda-0", "panda-1"]
CAMERAS = ("head_camera_agent0", "head_camera_agent1", "head_camera_global")
TRAINED = ["local-separate", "global-separate", "local-shared", "global-shared"]
CELLS = [Architecture(name) for name in TRAINED] + [Architecture("local-separate", True), Architecture("local-shared", True)]
EXPECTED_CAMERAS = {  # per trained architecture: each policy's camera key -> env camera, in agent order
    "local-separate": [{"img": "head_camera_agent0"}, {"img": "head_camera_agent1"}],
    "global-separate": [{"img_head_camera_global": "head_camera_global"}] * 2,
    "local-shared": [{"img_head_camera_agent0": "head_camera_agent0", "img_head_camera_agent1": "head_camera_agent1"}],
    "global-shared": [{"img_head_camera_global": "head_camera_global"}],
}


@pytest.fixture(scope="module")
def data_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Seed 0 of LiftBarrier-rf planned and rendered with every camera, converted for every architecture cell."""
    demos = tmp_path_factory.mktemp("demos")
    demo = plan_demo(TASK, 0, demos, CAMERAS)
    demo.runner.close()
    assert demo.replay_success, demo.result.message
    refs = list_episodes(demos / TASK)
    root = tmp_path_factory.mktemp("zarr")
    for arch in CELLS:
        options = dict(architecture=arch.name, include_global_camera=arch.global_camera, progress=False)
        if arch.shared:
            convert_shared(refs, root / arch.zarr_name(TASK, 1), **options)
        else:
            for i in range(2):
                convert_agent(refs, root / arch.zarr_name(TASK, 1, i), agent_id=i, **options)
    return root


@pytest.fixture(scope="module")
def trained(data_root: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Each trained architecture's checkpoint directory (its own, so that rollout finds it with no flag)."""
    from rf_dp_agents.training.loop import train

    out = {}
    for name in TRAINED:
        root = tmp_path_factory.mktemp(f"ckpt-{name}")
        train(parse_args([
            "--preset", "tiny", "--task", TASK, "--data-root", str(data_root), "--all-agents", "--architecture", name,
            "--output-dir", str(root), "--epochs", "1", "--val-ratio", "0", "--device", "cpu", "--no-progress",
        ]))
        out[name] = root
    return out


@pytest.fixture(scope="module")
def env():
    import envs  # noqa: F401  (registers the tasks)

    e = gym.make(TASK, obs_mode="rgb", control_mode="pd_joint_pos", camera_width=CAM_W, camera_height=CAM_H)
    yield e
    e.close()


def _open(path: Path, *keys: str) -> ReplayBuffer:
    return ReplayBuffer.open(path, keys=keys, required=keys)


def _runs(root: Path) -> list[Path]:
    return sorted(p for p in root.iterdir() if p.is_dir())


@pytest.mark.slow
def test_shared_dataset_equals_the_agent_datasets_side_by_side(data_root: Path) -> None:
    n = 1
    per_agent = [_open(data_root / Architecture("local-separate", True).zarr_name(TASK, n, i),
                       "img", "img_head_camera_global", "state", "action") for i in range(2)]
    shared = _open(data_root / f"{TASK}_Shared_LocalGlobal_{n}.zarr",
                   "img_head_camera_agent0", "img_head_camera_agent1", "img_head_camera_global", "state", "action")
    np.testing.assert_array_equal(shared.episode_ends, per_agent[0].episode_ends)
    for key in ("state", "action"):
        assert shared[key].shape[1] == 16
        np.testing.assert_array_equal(shared[key], np.concatenate([buf[key] for buf in per_agent], axis=1))
    for i in range(2):
        np.testing.assert_array_equal(shared[f"img_head_camera_agent{i}"], per_agent[i]["img"])
    np.testing.assert_array_equal(shared["img_head_camera_global"], per_agent[0]["img_head_camera_global"])
    assert not np.array_equal(per_agent[0]["img"], per_agent[1]["img"])  # the two arms' cameras differ
    glob = _open(data_root / f"{TASK}_Shared_Global_{n}.zarr", "img_head_camera_global", "state")
    np.testing.assert_array_equal(glob["img_head_camera_global"], shared["img_head_camera_global"])
    sep = _open(data_root / f"{TASK}_Agent1_Global_{n}.zarr", "img_head_camera_global", "action")
    np.testing.assert_array_equal(sep["action"], per_agent[1]["action"])
    record = dataset_record(data_root / f"{TASK}_Shared_LocalGlobal_{n}.zarr")
    assert record is not None and record.architecture == Architecture("local-shared", True)
    assert list(record.agents) == AGENTS and record.state_dim == record.action_dim == 16


def test_convert_cli_writes_the_shared_dataset(data_root: Path, tmp_path: Path) -> None:
    import zarr

    episodes = zarr.open_group(str(data_root / f"{TASK}_Shared_1.zarr"), mode="r").attrs["episodes"]
    demos = Path(episodes[0].rsplit(":", 1)[0]).parents[1]  # <demos>/<task>/<seed>.h5 of the fixture
    cmd = [sys.executable, str(REPO / "scripts" / "convert_to_zarr.py"), "--task", TASK, "--demos", str(demos),
           "--out", str(tmp_path), "--architecture", "global-shared"]
    done = subprocess.run(cmd, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert [p.name for p in tmp_path.iterdir()] == [f"{TASK}_Shared_Global_1.zarr"]
    assert dataset_record(tmp_path / f"{TASK}_Shared_Global_1.zarr").architecture == Architecture("global-shared")
    bad = subprocess.run(cmd[:-1] + ["central"], capture_output=True, text=True)
    assert bad.returncode != 0 and "local-shared" in bad.stderr  # tyro lists the choices


@pytest.mark.parametrize("name", TRAINED)
def test_each_architecture_trains_remembers_itself_and_rolls_out(name: str, trained: dict[str, Path], env) -> None:
    from rf_dp_agents.rollout.runner import build_router, checkpoint_paths, load_agent_policies

    arch = Architecture(name)
    runs = _runs(trained[name])
    assert [r.name for r in runs] == ([f"{TASK}_Shared" + arch.tag] if arch.shared else
                                      [f"{TASK}_Agent{i}{arch.tag}" for i in range(2)])
    for run, cameras in zip(runs, EXPECTED_CAMERAS[name]):
        doc = read_checkpoint_config(run)
        assert doc["architecture"]["name"] == name and doc["architecture"]["cameras"] == cameras
    cfg = RolloutConfig(task=TASK, checkpoint_dir=str(trained[name]), num_inference_steps=2, device="cpu")
    paths = checkpoint_paths(cfg, 2)  # found with no flag
    assert paths == [run / "best" for run in runs]
    policies = load_agent_policies(cfg, paths)
    for policy, cameras in zip(policies, EXPECTED_CAMERAS[name]):
        record = policy_record(policy.metadata)
        assert record is not None and record.architecture == arch
        assert policy.config.camera_keys == tuple(cameras)
        assert policy.config.state_dim == policy.config.action_dim == (16 if arch.shared else 8)
    router = build_router(env, policies)  # the rollout's routing, from the checkpoints' records alone
    assert [dict(plan.camera_map) for plan in router.plans.values()] == EXPECTED_CAMERAS[name]
    assert [plan.agents for plan in router.plans.values()] == ([AGENTS] if arch.shared else [[a] for a in AGENTS])
    summary = router.run_episode(seed=5, max_steps=9)
    assert summary.steps == 9
    assert sum(p.num_model_calls for p in policies) == (2 if arch.shared else 4)  # steps 1 and 9 start a chunk


def test_rollout_cli_uses_a_shared_checkpoint_with_shared_inference(trained: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "results.json"
    cmd = [sys.executable, str(REPO / "scripts" / "rollout.py"), "--task", TASK, "--checkpoint-dir",
           str(trained["local-shared"]), "--num-episodes", "2", "--num-envs", "2", "--inference", "shared",
           "--max-episode-steps", "9", "--num-inference-steps", "2", "--device", "cpu", "--output", str(out),
           "--no-progress"]
    done = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert done.returncode == 0, done.stderr[-3000:]
    doc = json.loads(out.read_text())
    assert doc["inference"]["mode"] == "shared" and doc["inference"]["server"]["batches"] >= 2
    assert sorted(ep["seed"] for ep in doc["episodes"]) == [10000, 10001]
    assert list(doc["policies"]) == ["panda-0+panda-1"]


def _state(obs: dict, agent: str) -> np.ndarray:
    q = obs["agent"][agent]["qpos"].numpy()
    return np.concatenate([q[:, :7], q[:, 7:].sum(axis=1, keepdims=True)], axis=1)


def test_shared_policy_actions_reach_their_arms_in_lock_step(trained: dict[str, Path], env) -> None:
    from envs.router import MultiAgentRouter, default_routes, policy_input, split_action

    run = _runs(trained["local-shared"])[0]
    routed, direct = load_policy(run, device="cpu"), load_policy(run, device="cpu")
    router = MultiAgentRouter(env, default_routes(env, [routed]))
    obs, _ = env.reset(seed=3)
    by_hand = {f"img_{cam}": obs["sensor_data"][cam]["rgb"].numpy() for cam in CAMERAS[:2]}
    by_hand["state"] = np.concatenate([_state(obs, a) for a in AGENTS], axis=1)
    helper = policy_input(routed, obs)
    assert sorted(helper) == sorted(by_hand)
    for key, value in by_hand.items():
        np.testing.assert_array_equal(np.asarray(helper[key]), value)
    expected, _ = direct.predict(by_hand, deterministic=True)
    assert not np.array_equal(expected[:, :8], expected[:, 8:])  # the slots differ, so a swap would show
    action = router.act(obs, episode_start=np.ones(1, bool), deterministic=True)
    assert list(action) == AGENTS
    np.testing.assert_array_equal(action["panda-0"].numpy(), expected[:, :8])
    np.testing.assert_array_equal(action["panda-1"].numpy(), expected[:, 8:])
    assert [a for a in split_action(expected, AGENTS)] == AGENTS
    assert routed.num_model_calls == 1  # one model call for both arms
    for _ in range(7):  # the rest of the Ta = 8 chunk, both arms from the same queue
        router.act(obs, deterministic=True)
    assert routed.num_model_calls == 1
    router.act(obs, deterministic=True)
    assert routed.num_model_calls == 2


def test_rollout_observations_equal_the_training_data_of_every_architecture(
    trained: dict[str, Path], data_root: Path, env
) -> None:
    """The demo replayed in the rollout's env: each policy's input, as the router builds it, equals the arrays of
    its dataset at the same steps, for every architecture (so a swapped camera or state order would show)."""
    import zarr
    from rf_dp_agents.data.convert import EpisodeRef, read_actions, read_seed
    from rf_dp_agents.rollout.runner import build_router

    source = zarr.open_group(str(data_root / f"{TASK}_Shared_1.zarr"), mode="r").attrs["episodes"][0]
    path, name = source.rsplit(":", 1)
    ref = EpisodeRef(Path(path), name)
    obs, _ = env.reset(seed=read_seed(ref), options={"reconfigure": True})  # a fresh scene, as rollout episodes start
    frames = {0: obs}
    for t, action in enumerate(read_actions(ref)[:10], start=1):
        obs, *_ = env.step({agent: np.asarray(a, np.float32)[None] for agent, a in action.items()})
        frames[t] = obs
    checked = 0
    for name in TRAINED:
        arch = Architecture(name)
        policies = [load_policy(run, device="cpu") for run in _runs(trained[name])]
        router = build_router(env, policies)
        for k, key in enumerate(router.plans):
            cams = list(policies[k].config.camera_keys)
            data = _open(data_root / arch.zarr_name(TASK, 1, None if arch.shared else k), *cams, "state")
            for t in (0, 10):
                seen = router.policy_observation(frames[t], key)
                assert sorted(seen) == sorted(cams + ["state"])
                for cam in cams:  # (B, H, W, 3) against the dataset's (3, H, W)
                    np.testing.assert_array_equal(np.asarray(seen[cam])[0].transpose(2, 0, 1), data[cam][t])
                np.testing.assert_array_equal(np.asarray(seen["state"])[0], data["state"][t])
                checked += 1
    assert checked == 2 * 6  # two steps of 2 + 2 + 1 + 1 policies


def test_dataset_of_another_architecture_is_an_error(data_root: Path) -> None:
    local = data_root / f"{TASK}_Agent0_1.zarr"
    with pytest.raises(ValueError, match=rf"{local}: its zarr attribute 'architecture' says local-separate, but "
                                         "local-shared was asked for"):
        plan_jobs(parse_args(["--task", TASK, "--zarr-path", str(local), "--architecture", "local-shared"]))
    shared = data_root / f"{TASK}_Shared_1.zarr"
    jobs = plan_jobs(parse_args(["--task", TASK, "--zarr-path", str(shared)]))
    assert [(j.run_dir, j.agent_id) for j in jobs] == [(Path("checkpoints") / f"{TASK}_Shared", None)]
    assert jobs[0].architecture.architecture == Architecture("local-shared")
    from rf_dp_agents.training.loop import train

    with pytest.raises(ValueError, match=r"needs camera_keys=\('img_head_camera_agent0', 'img_head_camera_agent1'\)"):
        train(parse_args(["--preset", "tiny", "--zarr-path", str(shared), "--model.camera-keys", "img_x",
                          "--device", "cpu", "--output-dir", str(data_root / "never")]))
    assert not (data_root / "never").exists()


def test_checkpoints_for_another_arm_count_or_several_architectures_are_errors(
    trained: dict[str, Path], tmp_path: Path
) -> None:
    from rf_dp_agents.rollout.agents import checkpoint_paths, task_num_arms

    three = "ThreeRobotsStackCube-rf"
    shared = _runs(trained["local-shared"])[0]
    cfg = RolloutConfig(task=three, checkpoints=(str(shared),))
    with pytest.raises(ValueError, match=rf"a shared policy for 2 arms \(panda-0, panda-1\), but {three} has 3 arms"):
        checkpoint_paths(cfg, task_num_arms(three))
    a0, a1 = _runs(trained["local-separate"])
    with pytest.raises(ValueError, match=rf"agent 0 of a task with 2 arms, given for agent 0 of {three}, which has 3"):
        checkpoint_paths(RolloutConfig(task=three, checkpoints=(str(a0), str(a1), str(a1))), 3)
    for run in (a0, a1, shared):
        (tmp_path / run.name).symlink_to(run)
    with pytest.raises(ValueError, match=r"runs of 2 architectures: local-separate .*; local-shared .*--architecture"):
        checkpoint_paths(RolloutConfig(task=TASK, checkpoint_dir=str(tmp_path)), 2)
    picked = checkpoint_paths(RolloutConfig(task=TASK, checkpoint_dir=str(tmp_path), architecture="local-shared"), 2)
    assert picked == [tmp_path / shared.name / "best"]


def test_a_bad_architecture_record_in_a_checkpoint_is_named(trained: dict[str, Path], tmp_path: Path) -> None:
    ckpt = tmp_path / "ckpt"
    shutil.copytree(_runs(trained["local-shared"])[0] / "best", ckpt)
    config = ckpt / "config.json"
    doc = json.loads(config.read_text())
    doc["architecture"]["cameras"].pop("img_head_camera_agent1")
    config.write_text(json.dumps(doc))
    with pytest.raises(ValueError, match=rf"{config}: 'model.camera_keys' is .* but its 'architecture' record"):
        load_policy(ckpt, device="cpu")
    del doc["architecture"]["agents"]
    config.write_text(json.dumps(doc))
    with pytest.raises(ValueError, match=rf"{config}: 'architecture' lacks the field 'agents'"):
        load_policy(ckpt, device="cpu")
