"""Offline action error of a trained run on its held-out windows, per sampler."""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from rf_dp_agents.checkpoint import load_checkpoint, save_checkpoint
from rf_dp_agents.data.dataset import SequenceDataset
from rf_dp_agents.data.synthetic import write_synthetic_dataset
from rf_dp_agents.offline_eval import SamplerSpec, action_errors, run_settings
from rf_dp_agents.training.cli import main as train_main

REPO = Path(__file__).resolve().parents[1]


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
        assert math.isfinite(err["mse"]) and 0 < err["mse"]
    assert res["errors"]["ddpm:4"] != res["errors"]["ddim:2"]  # each sampler's own samples
    again = action_errors(run_dir / "best", specs, max_windows=6, device="cpu")
    assert again["errors"] == res["errors"]  # same windows, same noise seeds


def test_known_error_of_a_model_pinned_to_the_action_minimum(run_dir: Path, tmp_path: Path) -> None:
    """A U-Net whose noise prediction is a huge constant makes every clipped DDPM and DDIM sample -1 (normalised),
    the normaliser's per-dimension minimum of the actions; the error is then the distance of the recorded
    executed actions (steps To-1 .. To-1+Ta of each window) from that minimum, computed here with numpy."""
    model, metadata = load_checkpoint(run_dir / "best")
    final = model.noise_pred_net.final_conv[1]
    with torch.no_grad():
        final.weight.zero_()
        final.bias.fill_(1e4)
    pinned = tmp_path / "pinned"
    pinned.mkdir()
    shutil.copy(run_dir / "run.json", pinned / "run.json")
    save_checkpoint(pinned / "best", model, metadata)
    specs = [SamplerSpec.parse("ddpm:4"), SamplerSpec.parse("ddim:2")]
    res = action_errors(pinned, specs, max_windows=6, device="cpu")

    cfg, settings = model.config, run_settings(pinned)
    dataset = SequenceDataset.for_model(settings["zarr_path"], cfg, settings["val_ratio"], settings["seed"],
                                        settings["max_train_episodes"], settings["image_key"])
    recorded = dataset.get_batch(torch.arange(6), split="val")["action"].numpy().astype(np.float64)
    executed = recorded[:, cfg.obs_horizon - 1 : cfg.obs_horizon - 1 + cfg.action_horizon]
    lowest = model.normalizer.unnormalize("action", -torch.ones(cfg.action_dim)).numpy().astype(np.float64)
    err = executed - lowest
    assert res["windows"] == 6 and np.abs(err).max() > 0.1
    for spec in specs:
        got = res["errors"][str(spec)]
        assert got["mse"] == pytest.approx(np.mean(err**2), rel=1e-5), spec
        assert got["mae"] == pytest.approx(np.mean(np.abs(err)), rel=1e-5), spec


def test_command_line_prints_and_writes_the_errors(run_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "errors.json"
    cmd = [sys.executable, str(REPO / "scripts" / "offline_eval.py"), str(run_dir), "--samplers", "ddpm:4", "ddim:2",
           "--max-windows", "6", "--device", "cpu", "--output", str(out)]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    written = json.loads(out.read_text())
    want = action_errors(run_dir, [SamplerSpec.parse("ddpm:4"), SamplerSpec.parse("ddim:2")], max_windows=6,
                         device="cpu")
    assert written["errors"] == want["errors"] and written["windows"] == 6 and written["split"] == "val"
    assert f"6 validation windows of {want['dataset']}" in proc.stdout
    for name, err in want["errors"].items():
        assert f"{name:>14}: MSE {err['mse']:.5f}  MAE {err['mae']:.4f}" in proc.stdout
    bad = subprocess.run([*cmd[:4], "--samplers", "euler:3"], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert bad.returncode == 1 and "error: sampler spec 'euler:3'" in bad.stderr


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
    assert SamplerSpec.parse("ddim:5:fused") == SamplerSpec("ddim", 5, fused=True)
    assert str(SamplerSpec.parse("ddim:5:fused")) == "ddim:5:fused"
    assert SamplerSpec.parse("ddim:5:bf16:fused") == SamplerSpec("ddim", 5, bf16=True, fused=True)
    assert str(SamplerSpec.parse("ddim:5:bf16:fused")) == "ddim:5:bf16:fused"
    with pytest.raises(ValueError, match="expected"):
        SamplerSpec.parse("ddim:5:fused:bf16")
    with pytest.raises(ValueError, match="expected"):
        SamplerSpec.parse("ddim:5:fused:compiled")
    assert SamplerSpec.parse("ddim:5:bf16:compiled") == SamplerSpec("ddim", 5, bf16=True, fused=False)
    assert str(SamplerSpec.parse("ddim:5:bf16:compiled")) == "ddim:5:bf16:compiled"
    assert [SamplerSpec.parse(text).fused for text in ("ddim:5", "ddim:5:fused", "ddim:5:compiled")] == [
        None, True, False]  # None keeps the model's own setting
    with pytest.raises(ValueError, match="ddim:2:bf16, ddim:2:fused, ddim:2:compiled run in CUDA graphs only; "
                                         "the model is on cpu"):
        action_errors(run_dir, [SamplerSpec("ddim", 2), SamplerSpec("ddim", 2, bf16=True),
                                SamplerSpec("ddim", 2, fused=True), SamplerSpec("ddim", 2, fused=False)],
                      device="cpu")
    lonely = tmp_path / "ckpt"
    shutil.copytree((run_dir / "best").resolve(), lonely)
    with pytest.raises(FileNotFoundError, match="no run.json"):
        action_errors(lonely, [SamplerSpec("ddim", 2)], device="cpu")
