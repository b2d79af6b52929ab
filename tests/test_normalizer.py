"""Min-max and Gaussian normalisation: range, round trip, constant dimensions, serialisation."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from rf_dp_agents.data import Normalizer


def data(seed=0):
    rng = np.random.default_rng(seed)
    state = rng.normal(3.0, 2.0, (50, 2, 8)).astype(np.float32)
    state[..., 5] = 0.04  # a constant dimension
    action = rng.uniform(-2.0, 5.0, (400, 8)).astype(np.float32)
    return {"state": state, "action": action}


@pytest.mark.parametrize("mode", ["minmax", "gaussian"])
def test_round_trip_and_range(mode):
    d = data()
    norm = Normalizer.fit(d, mode=mode)
    for key, value in d.items():
        x = torch.from_numpy(value)
        y = norm.normalize(key, x)
        assert torch.isfinite(y).all()
        torch.testing.assert_close(norm.unnormalize(key, y), x, rtol=1e-5, atol=1e-5)
        flat = y.reshape(-1, y.shape[-1])
        if mode == "minmax":
            assert flat.min() >= -1 - 1e-5 and flat.max() <= 1 + 1e-5
            varying = [i for i in range(8) if not (key == "state" and i == 5)]
            torch.testing.assert_close(flat[:, varying].min(0).values, -torch.ones(len(varying)))
            torch.testing.assert_close(flat[:, varying].max(0).values, torch.ones(len(varying)))
        else:
            varying = [i for i in range(8) if not (key == "state" and i == 5)]
            torch.testing.assert_close(flat[:, varying].mean(0), torch.zeros(len(varying)), atol=1e-4, rtol=0)
            torch.testing.assert_close(flat[:, varying].std(0, unbiased=False), torch.ones(len(varying)))
    assert torch.all(norm.normalize("state", torch.from_numpy(d["state"]))[..., 5] == 0)


def test_gaussian_mode_known_values():
    """Mean 2 and (population) std 1 per dimension: 1 and 3 map to -1 and 1; a constant dimension maps to 0."""
    x = np.array([[1.0, 10.0, 7.0], [3.0, 30.0, 7.0]], np.float32)
    norm = Normalizer.fit({"state": x}, mode="gaussian")
    y = norm.normalize("state", torch.from_numpy(x))
    torch.testing.assert_close(y, torch.tensor([[-1.0, -1.0, 0.0], [1.0, 1.0, 0.0]]))
    torch.testing.assert_close(norm.normalize("state", torch.tensor([2.0, 40.0, 8.0])), torch.tensor([0.0, 2.0, 1.0]))


def test_serialises_with_safetensors(tmp_path):
    norm = Normalizer.fit(data())
    save_file(norm.state_dict(), tmp_path / "n.safetensors")
    fresh = Normalizer({"state": 8, "action": 8})
    fresh.load_state_dict(load_file(tmp_path / "n.safetensors"), strict=True)
    x = torch.randn(4, 8)
    torch.testing.assert_close(fresh.normalize("action", x), norm.normalize("action", x))


def test_errors():
    norm = Normalizer.fit(data())
    with pytest.raises(KeyError, match="no key 'img'"):
        norm.normalize("img", torch.zeros(3))
    with pytest.raises(ValueError, match="expected last dimension 8"):
        norm.normalize("state", torch.zeros(2, 7))
    with pytest.raises(ValueError, match="NaN"):
        Normalizer.fit({"state": np.array([[np.nan, 1.0]])})
    with pytest.raises(ValueError, match="unknown mode"):
        Normalizer.fit({"state": np.ones((3, 2))}, mode="zscore")  # type: ignore[arg-type]
