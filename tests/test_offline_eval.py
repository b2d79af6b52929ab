"""Offline action error of a trained run on its held-out windows, per sampler."""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import pytest

from rf_dp_agents.data.synthetic import write_synthetic_dataset
from rf_dp_agents.offline_eval import SamplerSpec, action_errors
from rf_dp_agents.training.cli import main as train_main


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("offline")
    # Two cameras: the evaluation must read every camera the model was trained on, not only img.
    zarr_path = write_synthetic_dataset(
        root / "Synthetic-rf_Agent0_5.zarr", n_episodes=5, episode_length=24, extra_cameras=("img_head_camera_global",)
    )
    out = root / "run"
    args = ["--preset", "tiny", "--device", "cpu", "--batch-size", "8", "--no-progress", "--epochs", "1",
            "--val-ratio", "0.2", "--zarr-path", str(zarr_path), "--output-dir", str(out),
            "--model.camera-keys", "img", "img_head_camera_global"]
    assert train_main(args) == 0
    return out


def test_errors_per_sampler_on_the_validation_windows(run_dir: Path) -> None:
    specs = [SamplerSpec.parse("ddpm:4"), SamplerSpec.parse("ddim:2")]
    res = action_errors(run_dir, specs, max_windows=6, device="cpu")
    assert res["windows"] == 6 and set(res["errors"]) == {"ddpm:4", "ddim:2"}
    for err in res["errors"].values():
        assert math.isfinite(err["mse"]) and 0 < err["mse"] and err["mae"] ** 2 <= err["mse"] + 1e-9
    again = action_errors(run_dir / "best", specs, max_windows=6, device="cpu")
    assert again["errors"] == res["errors"]  # same windows, same noise seeds


def test_training_windows_are_a_separate_split(run_dir: Path) -> None:
    specs = [SamplerSpec.parse("ddpm:4")]
    train = action_errors(run_dir, specs, max_windows=6, device="cpu", split="train")
    val = action_errors(run_dir, specs, max_windows=6, device="cpu", split="val")
    assert train["split"] == "train" and val["split"] == "val" and train["windows"] == 6
    assert train["errors"]["ddpm:4"]["mse"] != val["errors"]["ddpm:4"]["mse"]  # other windows, other actions


def test_bad_input(run_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="split must be one of val, train, got 'test'"):
        action_errors(run_dir, [SamplerSpec("ddim", 2)], device="cpu", split="test")
    with pytest.raises(ValueError, match="expected ddpm\\|ddim\\|dpmsolver:<steps>"):
        SamplerSpec.parse("ddim")
    with pytest.raises(ValueError, match="expected"):
        SamplerSpec.parse("euler:10")
    with pytest.raises(ValueError, match="expected"):
        SamplerSpec.parse("ddim:10:fp16")
    assert SamplerSpec.parse("ddpm:10:bf16") == SamplerSpec("ddpm", 10, bf16=True)
    assert str(SamplerSpec.parse("ddpm:10:bf16")) == "ddpm:10:bf16" and not SamplerSpec.parse("ddpm:10").bf16
    with pytest.raises(ValueError, match="ddim:2:bf16.*CUDA graphs only; the model is on cpu"):
        action_errors(run_dir, [SamplerSpec("ddim", 2), SamplerSpec("ddim", 2, bf16=True)], device="cpu")
    lonely = tmp_path / "ckpt"
    shutil.copytree((run_dir / "best").resolve(), lonely)
    with pytest.raises(FileNotFoundError, match="no run.json"):
        action_errors(lonely, [SamplerSpec("ddim", 2)], device="cpu")
