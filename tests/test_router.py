"""The multi-agent router on real ManiSkill envs: per-agent cameras and state, merged actions, start-up checks."""

from __future__ import annotations

from types import SimpleNamespace

import gymnasium as gym
import mani_skill.envs  # noqa: F401  (registers ManiSkill's own tasks)
import numpy as np
import pytest
import torch

import envs  # noqa: F401  (registers the -rf tasks)
from envs.router import (
    STATE_DIM,
    AgentRoute,
    MultiAgentRouter,
    agent_state,
    default_routes,
    env_agent_keys,
)
from envs.tasks.base import PANDA_INIT_QPOS
from rf_dp_agents.config import tiny_model_config

W, H = 32, 24


class RecordingPolicy:
    """Holds the initial arm pose (plus a per-policy offset) and records every observation it is given."""

    def __init__(self, offset: float = 0.0, **config_overrides) -> None:
        overrides = dict(image_shape=(3, H, W))
        overrides.update(config_overrides)
        self.config = tiny_model_config(**overrides)
        self.offset = offset
        self.seen: list[dict] = []
        self.starts: list[np.ndarray] = []

    def predict(self, observation, state=None, episode_start=None, deterministic=False):
        self.seen.append({k: v.clone() for k, v in observation.items()})
        self.starts.append(np.asarray(episode_start).copy())
        n = next(iter(observation.values())).shape[0]
        action = np.tile(np.concatenate([PANDA_INIT_QPOS[:7] + self.offset, [1.0]]), (n, 1)).astype(np.float32)
        return action, state


@pytest.fixture(scope="module")
def lift_env():
    env = gym.make("LiftBarrier-rf", obs_mode="rgb", camera_width=W, camera_height=H)
    yield env
    env.close()


def test_agent_state_is_seven_joints_and_gripper_opening():
    qpos = np.array([0.1, 0.2, 0.3, -1.0, 0.5, 2.0, 0.7, 0.03, 0.025], dtype=np.float32)
    np.testing.assert_allclose(agent_state(qpos), [0.1, 0.2, 0.3, -1.0, 0.5, 2.0, 0.7, 0.055], rtol=1e-6)
    batch = torch.as_tensor(np.stack([qpos, qpos * 0]))
    out = agent_state(batch)
    assert isinstance(out, torch.Tensor) and out.shape == (2, STATE_DIM) and out.dtype == torch.float32
    obs = {"agent": {"panda-0": {"qpos": batch}, "panda-1": {"qpos": batch * 2}}}
    assert torch.allclose(agent_state(obs, "panda-1"), agent_state(batch * 2))
    single = {"agent": {"qpos": batch}}
    assert torch.allclose(agent_state(single, "panda-0"), out)
    with pytest.raises(ValueError, match="qpos"):
        agent_state(np.zeros(7))
    with pytest.raises(KeyError, match="panda-2"):
        agent_state(obs, "panda-2")


def test_each_policy_sees_its_own_camera_and_state(lift_env):
    policies = [RecordingPolicy(0.0), RecordingPolicy(0.01)]
    router = MultiAgentRouter(lift_env, default_routes(lift_env, policies))
    obs, _ = router.reset(seed=0)
    obs_next, *_ = router.step(obs)
    router.step(obs_next)
    for i, (key, policy) in enumerate(zip(["panda-0", "panda-1"], policies)):
        first = policy.seen[0]
        assert set(first) == {"img", "state"}
        assert first["img"].shape == (1, H, W, 3) and first["img"].dtype == torch.uint8
        assert torch.equal(first["img"], obs["sensor_data"][f"head_camera_agent{i}"]["rgb"])
        assert torch.equal(first["state"], agent_state(obs, key))
        assert torch.equal(policy.seen[1]["img"], obs_next["sensor_data"][f"head_camera_agent{i}"]["rgb"])
        assert [s.tolist() for s in policy.starts] == [[True], [False]]
    assert not torch.equal(policies[0].seen[0]["img"], policies[1].seen[0]["img"])
    assert not torch.equal(policies[0].seen[0]["state"], policies[1].seen[0]["state"])


def test_default_routes_give_a_second_camera_by_its_dataset_key(lift_env):
    cameras = ("img", "img_head_camera_global")
    policies = [RecordingPolicy(camera_keys=cameras), RecordingPolicy()]
    router = MultiAgentRouter(lift_env, default_routes(lift_env, policies))
    obs, _ = router.reset(seed=0)
    router.step(obs)
    seen = policies[0].seen[0]
    assert set(seen) == {*cameras, "state"}
    assert torch.equal(seen["img"], obs["sensor_data"]["head_camera_agent0"]["rgb"])
    assert torch.equal(seen["img_head_camera_global"], obs["sensor_data"]["head_camera_global"]["rgb"])
    assert set(policies[1].seen[0]) == {"img", "state"}


def test_actions_are_merged_by_agent_key(lift_env):
    policies = {"panda-0": RecordingPolicy(0.0), "panda-1": RecordingPolicy(0.02)}
    router = MultiAgentRouter(lift_env, default_routes(lift_env, policies))
    obs, _ = lift_env.reset(seed=1)
    action = router.act(obs, episode_start=np.array([True]))
    assert set(action) == {"panda-0", "panda-1"}
    diff = (action["panda-1"] - action["panda-0"])[0, :7]
    assert torch.allclose(diff, torch.full((7,), 0.02))
    lift_env.step(action)


def test_run_episode_stops_at_the_cap(lift_env):
    policies = [RecordingPolicy(), RecordingPolicy()]
    router = MultiAgentRouter(lift_env, default_routes(lift_env, policies))
    summary = router.run_episode(seed=2, max_steps=3)
    assert summary.steps == 3
    assert summary.success.tolist() == [False] and summary.first_success_step.tolist() == [-1]
    assert summary.extra_success["success_strict"].tolist() == [False]
    assert [s.tolist() for s in policies[0].starts] == [[True], [False], [False]]


class LiftBarAtStep(gym.Wrapper):
    """Lifts the bar 0.3 m (RoboFactory's rule then holds, the strict one does not) before env step ``at``."""

    def __init__(self, env: gym.Env, at: int) -> None:
        super().__init__(env)
        self.at, self.steps = at, 0

    def reset(self, **kwargs):
        self.steps = 0
        return self.env.reset(**kwargs)

    def step(self, action):
        self.steps += 1
        if self.steps == self.at:
            from mani_skill.utils.structs.pose import Pose

            bar = self.env.unwrapped.barrier
            bar.set_pose(Pose.create_from_pq(p=bar.pose.p + torch.tensor([0.0, 0.0, 0.3])))
        return self.env.step(action)


def test_run_episode_ends_at_the_first_success(lift_env):
    router = MultiAgentRouter(LiftBarAtStep(lift_env, at=2), default_routes(lift_env, [RecordingPolicy(), RecordingPolicy()]))
    summary = router.run_episode(seed=2, max_steps=6)
    assert summary.steps == 2  # success terminates the episode
    assert summary.success.tolist() == [True] and summary.first_success_step.tolist() == [2]
    assert summary.extra_success["success_strict"].tolist() == [False]


def test_missing_camera_fails_at_construction_naming_agent(lift_env):
    routes = default_routes(lift_env, [RecordingPolicy(), RecordingPolicy()])
    routes["panda-1"] = AgentRoute(routes["panda-1"].policy, cameras=("head_camera_agent7",))
    with pytest.raises(ValueError, match=r"'panda-1'.*head_camera_agent7"):
        MultiAgentRouter(lift_env, routes)


@pytest.mark.parametrize(
    ("overrides", "pattern"),
    [
        (dict(image_shape=(3, 64, 64)), r"'panda-0'.*head_camera_agent0.*image_shape"),
        (dict(state_dim=9), r"'panda-0'.*state_dim"),
        (dict(action_dim=7), r"'panda-0'.*action_dim"),
        (dict(camera_keys=("img", "wrist")), r"'panda-0'.*camera 'wrist'.*not in the env"),
    ],
)
def test_shape_mismatch_fails_at_construction(lift_env, overrides, pattern):
    routes = default_routes(lift_env, [RecordingPolicy(**overrides), RecordingPolicy()])
    with pytest.raises(ValueError, match=pattern):
        MultiAgentRouter(lift_env, routes)


def test_routes_must_cover_exactly_the_env_agents(lift_env):
    p = RecordingPolicy()
    with pytest.raises(ValueError, match=r"\['panda-1'\] have no route"):
        MultiAgentRouter(lift_env, {"panda-0": AgentRoute(p)})
    with pytest.raises(ValueError, match="panda-5"):
        MultiAgentRouter(lift_env, {"panda-0": AgentRoute(p), "panda-1": AgentRoute(p), "panda-5": AgentRoute(p)})
    with pytest.raises(TypeError, match="'panda-0'.*predict"):
        MultiAgentRouter(lift_env, {"panda-0": AgentRoute(SimpleNamespace(config=p.config)), "panda-1": AgentRoute(p)})
    with pytest.raises(ValueError, match="'panda-1'.*state source"):
        MultiAgentRouter(lift_env, {"panda-0": AgentRoute(p), "panda-1": AgentRoute(p, ("head_camera_agent1",), "state")})


def test_policy_camera_keys_can_be_mapped_by_name(lift_env):
    p0, p1 = RecordingPolicy(camera_keys=("front",)), RecordingPolicy()
    routes = {
        "panda-0": AgentRoute(p0, cameras={"front": "head_camera_global"}),
        "panda-1": AgentRoute(p1, cameras=("head_camera_agent1",)),
    }
    obs, _ = lift_env.reset(seed=0)
    MultiAgentRouter(lift_env, routes).act(obs)
    assert torch.equal(p0.seen[0]["front"], obs["sensor_data"]["head_camera_global"]["rgb"])


def test_state_only_env_is_rejected():
    env = gym.make("LiftBarrier-rf", obs_mode="state_dict", camera_width=W, camera_height=H)
    try:
        with pytest.raises(ValueError, match="obs_mode"):
            MultiAgentRouter(env, default_routes(env, [RecordingPolicy(), RecordingPolicy()]))
    finally:
        env.close()


def test_one_arm_task_is_routed_as_panda_0():
    env = gym.make("StackCube-rf", obs_mode="rgb", camera_width=W, camera_height=H)
    try:
        assert env_agent_keys(env) == ["panda-0"]
        policy = RecordingPolicy()
        router = MultiAgentRouter(env, default_routes(env, [policy]))
        obs, _ = router.reset(seed=0)
        action = router.act(obs, episode_start=[True])
        assert isinstance(action, torch.Tensor) and action.shape == (1, 8)
        env.step(action)
        assert torch.equal(policy.seen[0]["state"], agent_state(obs["agent"]["qpos"]))
    finally:
        env.close()


def test_maniskill_two_robot_stack_cube_wrist_cameras():
    env = gym.make("TwoRobotStackCube-v1", obs_mode="rgb", sensor_configs=dict(width=W, height=H))
    try:
        keys = env_agent_keys(env)
        assert keys == ["panda_wristcam-0", "panda_wristcam-1"]
        policies = [RecordingPolicy(), RecordingPolicy()]
        routes = {k: AgentRoute(p, cameras=(f"{k}-hand_camera",)) for k, p in zip(keys, policies)}
        router = MultiAgentRouter(env, routes)
        obs, _ = router.reset(seed=0)
        router.step(obs)
        for k, p in zip(keys, policies):
            assert torch.equal(p.seen[0]["img"], obs["sensor_data"][f"{k}-hand_camera"]["rgb"])
        assert not torch.equal(policies[0].seen[0]["img"], policies[1].seen[0]["img"])
        with pytest.raises(ValueError, match="head_camera_agent0"):
            MultiAgentRouter(env, default_routes(env, policies))
    finally:
        env.close()


def test_real_diffusion_policy_agents_drive_the_task(lift_env):
    from rf_dp_agents.data.normalizer import Normalizer
    from rf_dp_agents.model import DiffusionPolicy
    from rf_dp_agents.policy import DiffusionPolicyAgent

    torch.manual_seed(0)
    config = tiny_model_config(image_shape=(3, H, W), num_inference_steps=2)
    rng = np.random.default_rng(0)
    stats = {"state": rng.normal(size=(32, 8)).astype(np.float32), "action": rng.normal(size=(32, 8)).astype(np.float32)}
    agents = [DiffusionPolicyAgent(DiffusionPolicy(config, Normalizer.fit(stats))) for _ in range(2)]
    sent = []

    class Recorder(gym.Wrapper):
        def step(self, action):
            sent.append({k: v.clone() for k, v in action.items()})
            return self.env.step(action)

    router = MultiAgentRouter(Recorder(lift_env), default_routes(lift_env, agents))
    first, _ = router.reset(seed=0)
    obs = first
    for _ in range(2):
        obs, *_ = router.step(obs)
    assert [a.num_model_calls for a in agents] == [1, 1]  # one chunk each, the second action came from the queue
    # each arm got its own agent's action for its own camera and joints: the agents asked afresh agree
    for i, agent in enumerate(agents):
        agent.reset()
        own = {"img": first["sensor_data"][f"head_camera_agent{i}"]["rgb"], "state": agent_state(first, f"panda-{i}")}
        want = agent.predict_action_chunk(own, episode_start=[True], deterministic=True)
        for t in range(2):
            torch.testing.assert_close(torch.as_tensor(sent[t][f"panda-{i}"]).float(), torch.as_tensor(want[:, t]).float())
    assert not torch.allclose(torch.as_tensor(sent[0]["panda-0"]), torch.as_tensor(sent[0]["panda-1"]), atol=1e-3)
