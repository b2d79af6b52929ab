"""The policy object: observation history, action queue, episode starts, input handling and errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from rf_dp_agents import DiffusionPolicyAgent, tiny_model_config
from rf_dp_agents.model import DiffusionPolicy

SIZE = 32
TA = 8


@pytest.fixture(scope="module")
def model() -> DiffusionPolicy:
    torch.manual_seed(0)
    config = tiny_model_config(image_shape=(3, SIZE, SIZE), down_dims=(32, 64), num_inference_steps=2)
    return DiffusionPolicy(config).eval()


class CountingModel:
    """Records the batch size of every predict_action call made through an agent."""

    def __init__(self, agent: DiffusionPolicyAgent) -> None:
        self.sizes: list[int] = []
        inner = agent.model.predict_action

        def counted(obs, **kwargs):
            self.sizes.append(obs["state"].shape[0])
            return inner(obs, **kwargs)

        agent.model.predict_action = counted  # instance attribute shadows the method

    def remove(self, agent: DiffusionPolicyAgent) -> None:
        del agent.model.predict_action


@pytest.fixture
def counted(model):
    agent = DiffusionPolicyAgent(model)
    counter = CountingModel(agent)
    yield agent, counter
    counter.remove(agent)


def make_obs(n: int, seed: int = 0, layout: str = "hwc") -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    img = rng.integers(0, 256, (n, SIZE, SIZE, 3), dtype=np.uint8)
    if layout == "chw":
        img = np.ascontiguousarray(img.transpose(0, 3, 1, 2))
    return {"img": img, "state": rng.normal(size=(n, 8)).astype(np.float32)}


def test_one_chunk_serves_ta_calls(counted):
    agent, counter = counted
    obs = make_obs(3)
    for _ in range(TA):
        action, state = agent.predict(obs, state="hidden")
        assert action.shape == (3, 8) and action.dtype == np.float32
        assert state == "hidden"
    assert counter.sizes == [3] and agent.num_model_calls == 1
    agent.predict(obs)
    assert counter.sizes == [3, 3] and agent.num_model_calls == 2


def test_actions_are_the_chunk_in_order_from_a_repeated_first_frame(model):
    obs = make_obs(2, seed=1)
    chunk = DiffusionPolicyAgent(model).predict_action_chunk(obs, deterministic=True)
    assert chunk.shape == (2, TA, 8)
    agent = DiffusionPolicyAgent(model)
    actions = np.stack([agent.predict(obs, deterministic=True)[0] for _ in range(TA)], axis=1)
    np.testing.assert_array_equal(actions, chunk)

    # the history at an episode start is the first frame repeated To times
    stacked = {
        "img": torch.from_numpy(obs["img"]).permute(0, 3, 1, 2).unsqueeze(1).repeat(1, 2, 1, 1, 1),
        "state": torch.from_numpy(obs["state"]).unsqueeze(1).repeat(1, 2, 1),
    }
    pred = model.predict_action(stacked, generator=[torch.Generator().manual_seed(0) for _ in range(2)])
    np.testing.assert_allclose(chunk, pred[:, 1 : 1 + TA].numpy(), atol=1e-5)


def test_history_slides_one_frame_per_call(model):
    first, second = make_obs(1, seed=2), make_obs(1, seed=3)
    agent = DiffusionPolicyAgent(model)
    agent.predict(first)
    chunk = agent.predict_action_chunk(second, deterministic=True)
    history = {
        "img": torch.from_numpy(np.concatenate([first["img"], second["img"]])).permute(0, 3, 1, 2)[None],
        "state": torch.from_numpy(np.concatenate([first["state"], second["state"]]))[None],
    }
    pred = model.predict_action(history, generator=[torch.Generator().manual_seed(0)])
    np.testing.assert_allclose(chunk, pred[:, 1 : 1 + TA].numpy(), atol=1e-5)


def test_episode_start_resets_only_its_env(counted, model):
    agent, counter = counted
    steps = [make_obs(2, seed=s) for s in range(4)]
    actions = [
        agent.predict(obs, episode_start=np.array([s == 0] * 2), deterministic=True)[0]
        for s, obs in enumerate(steps[:3])
    ]
    chunk_env1 = DiffusionPolicyAgent(model).predict_action_chunk(steps[0], deterministic=True)[1]
    np.testing.assert_array_equal(np.stack(actions)[:, 1], chunk_env1[:3])

    calls_before = len(counter.sizes)
    action, _ = agent.predict(steps[3], episode_start=np.array([True, False]), deterministic=True)
    assert counter.sizes[calls_before:] == [1], "only the env that restarted should be re-planned"
    np.testing.assert_array_equal(action[1], chunk_env1[3])
    env0_only = {k: v[:1] for k, v in steps[3].items()}
    fresh = DiffusionPolicyAgent(model).predict_action_chunk(env0_only, deterministic=True)
    np.testing.assert_allclose(action[0], fresh[0, 0], atol=1e-5)


def test_layouts_containers_and_unbatched_inputs_agree(model):
    hwc = make_obs(2, seed=4)
    chw = {"img": np.ascontiguousarray(hwc["img"].transpose(0, 3, 1, 2)), "state": hwc["state"]}
    torch_obs = {k: torch.from_numpy(v) for k, v in chw.items()}

    def first_action(obs):
        return DiffusionPolicyAgent(model).predict(obs, deterministic=True)[0]

    reference = first_action(hwc)
    np.testing.assert_array_equal(first_action(chw), reference)
    as_torch = first_action(torch_obs)
    assert isinstance(as_torch, torch.Tensor) and as_torch.shape == (2, 8)
    np.testing.assert_array_equal(as_torch.numpy(), reference)
    single = first_action({k: v[1] for k, v in hwc.items()})
    assert single.shape == (8,)
    np.testing.assert_allclose(single, reference[1], atol=1e-5)
    flipped = {"img": hwc["img"][:, ::-1], "state": hwc["state"].astype(np.float64)}  # negative strides, float64
    assert first_action(flipped).shape == (2, 8)


def test_predict_does_not_mutate_inputs(model):
    obs = make_obs(2, seed=5)
    for value in obs.values():
        value.setflags(write=False)  # a write would raise
    before = {k: v.copy() for k, v in obs.items()}
    starts = np.array([True, True])
    agent = DiffusionPolicyAgent(model)
    for _ in range(TA + 1):
        agent.predict(obs, episode_start=starts)
    agent.predict_action_chunk(obs)
    for key in obs:
        np.testing.assert_array_equal(obs[key], before[key])
    torch_obs = {k: torch.from_numpy(v.copy()) for k, v in before.items()}
    agent.reset()
    agent.predict(torch_obs)
    agent.predict(torch_obs)
    for key in obs:
        np.testing.assert_array_equal(torch_obs[key].numpy(), before[key])


def test_deterministic_sampling_repeats_and_random_sampling_varies(model):
    obs = make_obs(1, seed=6)
    agent = DiffusionPolicyAgent(model)
    a = agent.predict_action_chunk(obs, deterministic=True)
    agent.reset()
    b = agent.predict_action_chunk(obs, deterministic=True)
    np.testing.assert_array_equal(a, b)
    agent.reset()
    c = agent.predict_action_chunk(obs, deterministic=False)
    assert not np.array_equal(a, c)


def test_submit_then_collect_is_predict(model):
    split, whole = DiffusionPolicyAgent(model, seed=3), DiffusionPolicyAgent(model, seed=3)
    for t in range(12):  # crosses a chunk boundary (Ta = 8) with an episode start in env 1 at t = 5
        obs = make_obs(2, seed=t)
        start = np.array([t == 0, t in (0, 5)])
        pending = split.submit(obs, episode_start=start, deterministic=True)
        assert (pending.result is not None) == (t in (0, 5, 8))  # the model runs only when some queue is empty
        np.testing.assert_array_equal(split.collect(pending), whole.predict(obs, episode_start=start, deterministic=True)[0])
    assert split.num_model_calls == whole.num_model_calls == 3


def test_number_of_envs_changes_only_after_reset(model):
    agent = DiffusionPolicyAgent(model)
    agent.predict(make_obs(2))
    assert agent.n_envs == 2
    with pytest.raises(ValueError, match="3 envs but this policy tracks 2; call reset"):
        agent.predict(make_obs(3))
    agent.reset()
    assert agent.n_envs is None
    assert agent.predict(make_obs(3))[0].shape == (3, 8)


def _bad(key: str, value) -> dict:
    obs = make_obs(2)
    if value is None:
        del obs[key]
    else:
        obs[key] = value
    return obs


@pytest.mark.parametrize(
    ("observation", "kwargs", "message"),
    [
        (_bad("img", None), {}, r"missing keys \['img'\]"),
        (_bad("state", None), {}, r"missing keys \['state'\]"),
        (_bad("img", np.zeros((2, SIZE, SIZE, 3), np.float32)), {}, r"'img'.*uint8.*float32"),
        (_bad("img", np.zeros((2, 9, 9, 3), np.uint8)), {}, r"\(N, 3, 32, 32\) or \(N, 32, 32, 3\).*\(2, 9, 9, 3\)"),
        (_bad("img", np.zeros((3, SIZE, SIZE, 3), np.uint8)), {}, r"'img'.*got \(3, 32, 32, 3\)"),
        (_bad("state", np.zeros((2, 7), np.float32)), {}, r"'state'.*\(N, 8\) or \(8,\).*\(2, 7\)"),
        (_bad("state", np.zeros((2, 1, 8), np.float32)), {}, r"'state'.*\(2, 1, 8\)"),
        (_bad("state", np.full((2, 8), np.nan, np.float32)), {}, r"'state'.*NaN"),
        (_bad("state", np.zeros((2, 8), bool)), {}, r"'state'.*float.*bool"),
        (_bad("state", [[0.0] * 8] * 2), {}, r"'state'.*numpy array or torch tensor.*list"),
        ([np.zeros(8)], {}, r"observation must be a dict"),
        (make_obs(2), {"episode_start": np.array([True, False, True])}, r"episode_start must be 2 booleans"),
    ],
)
def test_bad_observations_raise_clear_errors(model, observation, kwargs, message):
    agent = DiffusionPolicyAgent(model)
    with pytest.raises(ValueError, match=message):
        agent.predict(observation, **kwargs)
