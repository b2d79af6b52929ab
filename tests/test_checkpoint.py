"""Checkpoints: safetensors + JSON round trip, run-directory resolution, strict loading, pickle refusal."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from rf_dp_agents import DiffusionPolicyAgent, ModelConfig, load_policy, tiny_model_config
from rf_dp_agents.checkpoint import CONFIG_NAME, WEIGHTS_NAME, load_checkpoint, save_checkpoint
from rf_dp_agents.data.normalizer import Normalizer
from rf_dp_agents.model import DiffusionPolicy

SIZE = 32


def make_model(seed: int = 0, **overrides) -> DiffusionPolicy:
    torch.manual_seed(seed)
    config = tiny_model_config(image_shape=(3, SIZE, SIZE), down_dims=(32, 64), num_inference_steps=2, **overrides)
    rng = np.random.default_rng(seed)
    normalizer = Normalizer.fit({"state": rng.normal(size=(40, 8)), "action": rng.normal(3.0, 2.0, size=(40, 8))})
    return DiffusionPolicy(config, normalizer).eval()


@pytest.fixture(scope="module")
def model() -> DiffusionPolicy:
    return make_model()


@pytest.fixture
def saved(tmp_path, model) -> Path:
    return save_checkpoint(tmp_path / "ckpt", model, metadata={"epoch": 12, "val_loss": 0.25})


def make_obs(n: int = 2) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(1)
    return {
        "img": rng.integers(0, 256, (n, SIZE, SIZE, 3), dtype=np.uint8),
        "state": rng.normal(size=(n, 8)).astype(np.float32),
    }


def test_save_writes_json_and_safetensors_only(saved, model):
    assert sorted(p.name for p in saved.iterdir()) == [CONFIG_NAME, WEIGHTS_NAME]
    doc = json.loads((saved / CONFIG_NAME).read_text())
    assert doc["format_version"] == 1
    assert ModelConfig.from_dict(doc["model"]) == model.config
    assert doc["normalizer"] == {"state": 8, "action": 8}
    tensors = load_file(str(saved / WEIGHTS_NAME))
    assert set(tensors) == set(model.state_dict())
    assert torch.equal(tensors["normalizer.action_scale"], model.normalizer.action_scale)
    assert not [p for p in saved.parent.iterdir() if p.name.startswith(".")], "temporary directories left behind"


def test_save_load_gives_identical_deterministic_actions(saved, model):
    policy = load_policy(saved, device="cpu")
    assert isinstance(policy, DiffusionPolicyAgent)
    assert policy.config == model.config
    assert not policy.model.training and policy.device == torch.device("cpu")
    assert policy.metadata == {"epoch": 12, "val_loss": 0.25}
    for name, value in model.normalizer.state_dict().items():
        assert torch.equal(policy.model.normalizer.state_dict()[name], value), name
    original = DiffusionPolicyAgent(model)
    obs = make_obs()
    for _ in range(model.config.action_horizon + 2):
        expected, _ = original.predict(obs, deterministic=True)
        got, _ = policy.predict(obs, deterministic=True)
        np.testing.assert_array_equal(got, expected)


def test_load_checkpoint_returns_metadata_and_overwrite_replaces(tmp_path, model):
    path = tmp_path / "best"
    save_checkpoint(path, model, metadata={"epoch": 1})
    other = make_model(seed=5)
    save_checkpoint(path, other, metadata={"epoch": 2})
    loaded, metadata = load_checkpoint(path)
    assert metadata == {"epoch": 2}
    for name, value in other.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], value), name
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best"]


def test_run_directory_prefers_best_then_last(tmp_path):
    first, second = make_model(seed=1), make_model(seed=2)
    save_checkpoint(tmp_path / "last", first, metadata={"which": "last"})
    assert load_policy(tmp_path, device="cpu").metadata == {"which": "last"}
    save_checkpoint(tmp_path / "best", second, metadata={"which": "best"})
    assert load_policy(tmp_path, device="cpu").metadata == {"which": "best"}
    assert load_policy(tmp_path / "best" / CONFIG_NAME, device="cpu").metadata == {"which": "best"}


def test_load_policy_auto_device(saved):
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert load_policy(saved).device.type == expected


def test_save_unwraps_compiled_models_and_refuses_other_modules(tmp_path, model):
    path = save_checkpoint(tmp_path / "compiled", torch.compile(model))
    assert set(load_file(str(path / WEIGHTS_NAME))) == set(model.state_dict())
    with pytest.raises(TypeError, match="needs a DiffusionPolicy, got Linear"):
        save_checkpoint(tmp_path / "other", torch.nn.Linear(2, 2))


def test_metadata_must_be_plain_json_without_reserved_keys(tmp_path, model):
    with pytest.raises(ValueError, match="reserved keys"):
        save_checkpoint(tmp_path / "a", model, metadata={"model": {}})
    with pytest.raises(ValueError, match="not plain JSON"):
        save_checkpoint(tmp_path / "b", model, metadata={"when": object()})
    with pytest.raises(ValueError, match="not plain JSON"):
        save_checkpoint(tmp_path / "c", model, metadata={"loss": float("nan")})
    assert not list(tmp_path.iterdir())


def test_missing_tensor_fails_loudly(saved):
    tensors = load_file(str(saved / WEIGHTS_NAME))
    del tensors["noise_pred_net.final_conv.1.weight"]
    save_file(tensors, str(saved / WEIGHTS_NAME))
    with pytest.raises(ValueError, match=r"missing tensors: noise_pred_net\.final_conv\.1\.weight"):
        load_policy(saved, device="cpu")


def test_unexpected_and_mis_typed_tensors_fail_loudly(saved):
    tensors = load_file(str(saved / WEIGHTS_NAME))
    tensors["extra.weight"] = torch.zeros(2)
    tensors["normalizer.state_scale"] = tensors["normalizer.state_scale"].double()
    save_file(tensors, str(saved / WEIGHTS_NAME))
    with pytest.raises(ValueError, match=r"unexpected tensors: extra\.weight.*normalizer\.state_scale.*float64"):
        load_policy(saved, device="cpu")


def test_config_that_does_not_match_the_weights_fails_loudly(saved):
    doc = json.loads((saved / CONFIG_NAME).read_text())
    doc["model"]["down_dims"] = [32, 128]
    (saved / CONFIG_NAME).write_text(json.dumps(doc))
    with pytest.raises(ValueError, match="mis-shaped.*file .* vs model"):
        load_policy(saved, device="cpu")


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda doc: doc.update(format_version=99), "format_version 99 is not supported"),
        (lambda doc: doc.update(format_version=True), "format_version True is not supported"),
        (lambda doc: doc["model"].update(bogus=1), r"key 'model': unknown ModelConfig keys: \['bogus'\]"),
        (lambda doc: doc["model"].update(pred_horizon=10), "key 'model': ModelConfig.pred_horizon"),
        (lambda doc: doc["model"].update(obs_horizon="two"), r"ModelConfig.obs_horizon must be an integer, got 'two' \(str\)"),
        (lambda doc: doc["model"].update(num_inference_steps=2.5), "ModelConfig.num_inference_steps must be an integer"),
        (lambda doc: doc["model"].update(down_dims=[32, "64"]), r"ModelConfig.down_dims\[1\] must be an integer"),
        (lambda doc: doc["model"].update(image_shape="3x32x32"), "ModelConfig.image_shape must be a list of integers"),
        (lambda doc: doc["model"].update(clip_sample="yes"), "ModelConfig.clip_sample must be true or false"),
        (lambda doc: doc["model"].update(camera_keys="img"), "ModelConfig.camera_keys must be a list of strings"),
        (lambda doc: doc["model"].update(sampler=3), "ModelConfig.sampler must be a string"),
        (lambda doc: doc.pop("normalizer"), "'normalizer' must be a JSON object"),
        (lambda doc: doc["normalizer"].update(state="eight"), "key 'normalizer.state' must be a positive integer"),
        (lambda doc: doc["normalizer"].update(state=9), "normalizer key 'state' has dimension 9"),
    ],
)
def test_bad_config_json_fails_loudly_naming_the_file(saved, edit, message):
    doc = json.loads((saved / CONFIG_NAME).read_text())
    edit(doc)
    (saved / CONFIG_NAME).write_text(json.dumps(doc))
    with pytest.raises(ValueError, match=message) as info:
        load_policy(saved, device="cpu")
    assert str(saved / CONFIG_NAME) in str(info.value)


def test_corrupt_files_fail_loudly(saved):
    whole = (saved / WEIGHTS_NAME).read_bytes()
    for damaged in (b"not safetensors", b"", whole[: len(whole) // 2]):
        (saved / WEIGHTS_NAME).write_bytes(damaged)
        with pytest.raises(ValueError, match=f"{saved / WEIGHTS_NAME}: cannot read safetensors"):
            load_policy(saved, device="cpu")
    for damaged in (b"{not json", b"", b"\xff\xfe binary"):
        (saved / CONFIG_NAME).write_bytes(damaged)
        with pytest.raises(ValueError, match=f"{saved / CONFIG_NAME}: not valid JSON"):
            load_policy(saved, device="cpu")


class _Trap:
    """Unpickling this creates a file: proof that a loader ran code from the checkpoint."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


@pytest.mark.parametrize("name", ["model.ckpt", "policy.pt", "weights.pth"])
def test_pickle_files_are_refused_without_unpickling(tmp_path, name):
    marker = tmp_path / "code_ran"
    file = tmp_path / name
    file.write_bytes(pickle.dumps(_Trap(marker)))
    with pytest.raises(ValueError, match="refusing to load a pickle"):
        load_policy(file, device="cpu")
    with pytest.raises(FileNotFoundError, match=rf"pickle files \['{name}'\] are not loaded"):
        load_policy(tmp_path, device="cpu")
    assert not marker.exists()


def test_missing_paths_name_what_was_expected(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_policy(tmp_path / "nowhere", device="cpu")
    (tmp_path / "run" / "best").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match=r"config\.json \+ model\.safetensors.*best/ or last/"):
        load_policy(tmp_path / "run", device="cpu")
