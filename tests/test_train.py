"""The trainer end to end on CPU: a tiny run on a synthetic zarr, its outputs, the CLI and its errors."""

from __future__ import annotations

import importlib.metadata
import json
import math
import os
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from rf_dp_agents import load_policy
from rf_dp_agents.training import NonFiniteLossError, TrainConfig, preset_config
from rf_dp_agents.training.cli import main, parse_args
from rf_dp_agents.training.config import resolve_dataset
from rf_dp_agents.training.distributed import DistInfo
from rf_dp_agents.training.ema import EMA
from rf_dp_agents.training.loop import BestTracker, Trainer, plan_jobs
from rf_dp_agents.training.metrics import ALL_METRICS, read_metrics
from rf_dp_agents.data.synthetic import write_synthetic_dataset

TINY = ["--preset", "tiny", "--device", "cpu", "--batch-size", "8", "--no-progress"]


@pytest.fixture(scope="module")
def zarr_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_synthetic_dataset(tmp_path_factory.mktemp("data") / "Synthetic-rf_Agent0_4.zarr")


@pytest.fixture(scope="module")
def run_dir(zarr_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("runs") / "tiny"
    args = [*TINY, "--zarr-path", str(zarr_path), "--output-dir", str(out), "--epochs", "3", "--wandb", "--wandb-mode", "offline"]
    assert main(args) == 0
    return out


def test_tiny_run_lowers_the_loss_and_logs_every_metric(run_dir: Path) -> None:
    records = read_metrics(run_dir / "metrics.jsonl")
    names = set().union(*records)
    assert set(ALL_METRICS) <= names, f"missing metrics: {set(ALL_METRICS) - names}"
    steps = [r["train/global_step"] for r in records if "train/loss" in r]
    assert steps == list(range(1, len(steps) + 1))  # every step logged once, in order
    val = [r["val/loss"] for r in records if "val/loss" in r]
    assert len(val) == 3 and all(math.isfinite(v) for v in val)
    assert val[-1] < val[0]
    epoch_means = {}
    for r in records:
        if "train/loss" in r:
            epoch_means.setdefault(r["train/epoch"], []).append(r["train/loss"])
    assert np.mean(epoch_means[3]) < np.mean(epoch_means[1])
    assert (run_dir / "loss.png").stat().st_size > 1000


def test_wandb_offline_run_holds_the_metrics(run_dir: Path) -> None:
    (run_file,) = (run_dir / "wandb").glob("offline-run-*/run-*.wandb")
    names = ("train/loss", "val/loss", "train/grad_norm", "train/samples_per_s")
    # wandb's service process writes the run file on its own after finish() returns (on a loaded machine the
    # file can still hold only its header then): read it until every metric is there or two minutes have passed.
    deadline = time.monotonic() + 120
    while True:
        data = run_file.read_bytes()
        if all(name.encode() in data for name in names) or time.monotonic() > deadline:
            break
        time.sleep(1)
    for name in names:
        assert name.encode() in data


def best_epoch_follows(records: list[dict], metric: str) -> int:
    """The epoch whose validation had the lowest ``metric`` (the first one on ties)."""
    vals = [(r[metric], r["train/epoch"]) for r in records if metric in r]
    return min(vals, key=lambda v: v[0])[1]


def test_best_follows_the_sampled_action_error_by_default(run_dir: Path) -> None:
    records = read_metrics(run_dir / "metrics.jsonl")
    mse = [r["val/action_mse"] for r in records if "val/action_mse" in r]
    assert len(mse) == 3 and all(math.isfinite(v) and v > 0 for v in mse)
    best = json.loads((run_dir / "best" / "config.json").read_text())
    assert best["best_metric"] == "action_mse"
    assert best["epoch"] == best_epoch_follows(records, "val/action_mse")
    assert best["val_action_mse"] == min(mse)


def test_best_metric_val_loss(zarr_path: Path, tmp_path: Path) -> None:
    out = tmp_path / "by_loss"
    assert main([*TINY, "--zarr-path", str(zarr_path), "--output-dir", str(out), "--epochs", "2",
                 "--best-metric", "val_loss"]) == 0
    records = read_metrics(out / "metrics.jsonl")
    assert not any("val/action_mse" in r for r in records)  # not sampled when nothing follows it
    best = json.loads((out / "best" / "config.json").read_text())
    assert best["best_metric"] == "val_loss" and best["val_action_mse"] is None
    assert best["epoch"] == best_epoch_follows(records, "val/loss")
    # Resuming under the other metric starts a new best: the scores of the two metrics are not comparable.
    assert main([*TINY, "--zarr-path", str(zarr_path), "--output-dir", str(out), "--epochs", "3", "--resume"]) == 0
    best = json.loads((out / "best" / "config.json").read_text())
    assert best["best_metric"] == "action_mse" and best["epoch"] == 3 and best["val_action_mse"] > 0
    with pytest.raises(SystemExit):
        parse_args([*TINY, "--zarr-path", str(zarr_path), "--best-metric", "success"])
    with pytest.raises(ValueError, match="val_action_windows must be positive"):
        TrainConfig(task="x", val_action_windows=0)


def test_best_last_and_run_record(run_dir: Path, zarr_path: Path) -> None:
    for name in ("best", "last"):
        ckpt = run_dir / name
        assert ckpt.is_symlink() and ckpt.is_dir()
        assert (ckpt / "config.json").is_file() and (ckpt / "model.safetensors").is_file()
    assert (run_dir / "last" / "training_state.safetensors").is_file()
    last_meta = json.loads((run_dir / "last" / "config.json").read_text())
    assert last_meta["epoch"] == 3 and last_meta["weights"] == "ema"
    assert last_meta["model"]["image_shape"] == [3, 32, 32]
    run = json.loads((run_dir / "run.json").read_text())
    from rf_dp_agents.data import SequenceDataset

    assert run["dataset"]["hash"] == SequenceDataset(zarr_path).content_hash
    assert run["config"]["epochs"] == 3 and run["config"]["batch_size"] == 8
    assert run["versions"]["torch"] == importlib.metadata.version("torch")
    # Only the snapshots the links point at are kept.
    kept = sorted(p.name for p in (run_dir / "snapshots").iterdir())
    assert kept == sorted({os.readlink(run_dir / "best").split("/")[-1], os.readlink(run_dir / "last").split("/")[-1]})


def test_load_policy_on_the_run_directory(run_dir: Path) -> None:
    policy = load_policy(run_dir, device="cpu")
    obs = {"img": np.zeros((2, 32, 32, 3), np.uint8), "state": np.zeros((2, 8), np.float32)}
    action, _ = policy.predict(obs, deterministic=True)
    assert action.shape == (2, 8) and np.isfinite(action).all()


def test_preset_then_flags_override(zarr_path: Path) -> None:
    cfg = parse_args(["--preset", "tiny", "--zarr-path", str(zarr_path), "--epochs", "7", "--model.down-dims", "16", "32"])
    assert cfg.preset == "tiny" and cfg.epochs == 7 and cfg.batch_size == 16
    assert cfg.model.down_dims == (16, 32) and cfg.model.image_shape == (3, 32, 32)
    default = parse_args(["--task", "LiftBarrier-rf"])
    assert (default.epochs, default.batch_size, default.lr, default.seed) == (300, 64, 1e-4, 100)
    assert default.adam_betas == (0.95, 0.999) and default.weight_decay == 1e-6 and default.lr_warmup_steps == 500
    assert default.ema_power == 0.75 and default.val_every == 10
    m = default.model
    assert (m.obs_horizon, m.action_horizon, m.pred_horizon, m.image_shape) == (2, 8, 16, (3, 240, 320))


def test_dataset_discovery(tmp_path: Path, zarr_path: Path) -> None:
    root = tmp_path / "zarr"
    root.mkdir()
    for name in ("Lift-rf_Agent0_50.zarr", "Lift-rf_Agent0_150.zarr", "Lift-rf_Agent1_150.zarr"):
        shutil.copytree(zarr_path, root / name)
    os.utime(root / "Lift-rf_Agent0_50.zarr", (1, 1))
    assert resolve_dataset(root, "Lift-rf", 0).name == "Lift-rf_Agent0_150.zarr"
    assert resolve_dataset(root, "Lift-rf", 0, num_demos=50).name == "Lift-rf_Agent0_50.zarr"
    cfg = preset_config("tiny", task="Lift-rf", all_agents=True, data_root=root, output_dir=tmp_path / "ck")
    jobs = plan_jobs(cfg)
    assert [j.agent_id for j in jobs] == [0, 1]
    assert [j.run_dir for j in jobs] == [tmp_path / "ck" / "Lift-rf_Agent0", tmp_path / "ck" / "Lift-rf_Agent1"]
    assert plan_jobs(preset_config("tiny", task="Lift-rf", agent_id=1, data_root=root))[0].run_dir == Path(
        "checkpoints/Lift-rf_Agent1"
    )


def test_missing_dataset_says_where_and_how(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["--task", "Nothing-rf", "--agent-id", "2", "--data-root", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 1
    assert f"{tmp_path}/Nothing-rf_Agent2_<n>.zarr" in err
    assert "python scripts/generate_data.py --task Nothing-rf --num 150" in err
    assert "python scripts/convert_to_zarr.py --task Nothing-rf --all-agents" in err


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--model.state-dim", "7"], "data/state has 8 dims per step but the model expects state_dim=7"),
        (["--model.action-dim", "7"], "data/action has 8 dims per step but the model expects action_dim=7"),
        (["--batch-size", "64"], "is larger than the 39 training windows"),
    ],
)
def test_bad_shapes_are_clear_errors(flags: list[str], message: str, zarr_path: Path, tmp_path: Path, capsys) -> None:
    assert main([*TINY, "--zarr-path", str(zarr_path), "--output-dir", str(tmp_path / "r"), *flags]) == 1
    assert message in capsys.readouterr().err


def test_existing_run_needs_resume(run_dir: Path, zarr_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main([*TINY, "--zarr-path", str(zarr_path), "--output-dir", str(run_dir)]) == 1
    assert "pass --resume" in capsys.readouterr().err


def test_corrupt_checkpoint_on_resume(run_dir: Path, zarr_path: Path, tmp_path: Path, capsys) -> None:
    copy = tmp_path / "copy"
    shutil.copytree(run_dir, copy, symlinks=True)
    state = copy / "last" / "training_state.safetensors"
    state.write_bytes(state.read_bytes()[: 1000])
    assert main([*TINY, "--zarr-path", str(zarr_path), "--output-dir", str(copy), "--resume", "--epochs", "4"]) == 1
    err = capsys.readouterr().err
    assert "training_state.safetensors is corrupt" in err and "cannot resume" in err


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("epoch", None, "field 'epoch' is missing"),
        ("global_step", "twelve", "field 'global_step' must be a non-negative integer, got 'twelve'"),
        ("bad_validations", -1, "field 'bad_validations' must be a non-negative integer, got -1"),
        ("ema", None, "field 'ema' is missing or damaged"),
        ("best_score", "low", "field 'best_score' must be a number, got 'low'"),
    ],
)
def test_damaged_training_state_field_names_file_and_field(
    field: str, value: object, message: str, run_dir: Path, zarr_path: Path, tmp_path: Path, capsys
) -> None:
    copy = tmp_path / "copy"
    shutil.copytree(run_dir, copy, symlinks=True)
    state = (copy / "last").resolve() / "training_state.json"
    meta = json.loads(state.read_text())
    assert field in meta
    if value is None:
        del meta[field]
    else:
        meta[field] = value
    state.write_text(json.dumps(meta))
    assert main([*TINY, "--zarr-path", str(zarr_path), "--output-dir", str(copy), "--resume", "--epochs", "4"]) == 1
    err = capsys.readouterr().err
    assert f"cannot resume: {state}" in err or f"cannot resume: {copy / 'last' / 'training_state.json'}" in err
    assert message in err


def test_image_shape_is_adopted_from_the_dataset(zarr_path: Path, tmp_path: Path) -> None:
    cfg = parse_args([*TINY, "--zarr-path", str(zarr_path), "--model.image-shape", "3", "48", "48",
                      "--model.crop-shape", "42", "42", "--output-dir", str(tmp_path / "r")])
    trainer = Trainer(cfg, plan_jobs(cfg)[0], DistInfo(0, 0, 1, torch.device("cpu")))
    trainer._setup()
    assert trainer.model_cfg.image_shape == (3, 32, 32) and trainer.model_cfg.crop_shape == (28, 28)


@pytest.mark.parametrize("poison", ["nan", "inf"])
def test_nan_or_inf_loss_stops_and_keeps_the_last_good_checkpoint(
    poison: str, run_dir: Path, zarr_path: Path, tmp_path: Path
) -> None:
    copy = tmp_path / "nan"
    shutil.copytree(run_dir, copy, symlinks=True)
    good = os.readlink(copy / "last")
    cfg = parse_args([*TINY, "--zarr-path", str(zarr_path), "--output-dir", str(copy), "--resume", "--epochs", "4",
                      "--log-flush-every", "1"])
    trainer = Trainer(cfg, plan_jobs(cfg)[0], DistInfo(0, 0, 1, torch.device("cpu")))
    trainer.prepare()
    assert trainer.global_step == 12
    with torch.no_grad():
        if poison == "nan":
            next(trainer.policy.noise_pred_net.parameters()).fill_(float("nan"))
        else:  # a noise prediction of 1e30 everywhere: its squared error overflows float32, the loss is inf
            trainer.policy.noise_pred_net.final_conv[1].bias.fill_(1e30)
    with pytest.raises(NonFiniteLossError, match=f"training loss became {poison} at global step 13"):
        trainer.fit()
    assert os.readlink(copy / "last") == good
    action, _ = load_policy(copy, device="cpu").predict(
        {"img": np.zeros((1, 32, 32, 3), np.uint8), "state": np.zeros((1, 8), np.float32)}, deterministic=True
    )
    assert np.isfinite(action).all()


def test_config_validation() -> None:
    with pytest.raises(ValueError, match="batch_size must be positive"):
        TrainConfig(task="x", batch_size=0)
    with pytest.raises(ValueError, match="--all-agents"):
        TrainConfig(zarr_path=Path("a.zarr"), all_agents=True)
    with pytest.raises(ValueError, match="pass --task"):
        TrainConfig().check_data_source()


def test_time_budget_ends_the_run_like_a_last_epoch(zarr_path: Path, tmp_path: Path) -> None:
    out = tmp_path / "budget"
    assert main([*TINY, "--zarr-path", str(zarr_path), "--output-dir", str(out), "--epochs", "50",
                 "--val-every", "20", "--save-every", "20", "--max-minutes", "1e-6"]) == 0
    last = json.loads((out / "last" / "config.json").read_text())
    assert last["epoch"] == 1  # stopped after the first epoch, and saved it although 1 % 20 != 0
    records = read_metrics(out / "metrics.jsonl")
    assert [r["train/epoch"] for r in records if "val/loss" in r] == [1]
    assert (out / "best" / "model.safetensors").is_file()
    with pytest.raises(ValueError, match="max_minutes must be positive"):
        TrainConfig(task="x", max_minutes=0)


@pytest.fixture(scope="module")
def four_epoch_run(zarr_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """4 epochs of 4 steps, 4 of them warm-up, keeping the weights of epochs 2 and 4."""
    out = tmp_path_factory.mktemp("runs") / "kept"
    assert main([*TINY, "--zarr-path", str(zarr_path), "--output-dir", str(out), "--epochs", "4",
                 "--keep-every", "2", "--save-every", "1", "--lr-warmup-steps", "4"]) == 0
    return out


def test_learning_rate_warms_up_then_follows_a_cosine(four_epoch_run: Path) -> None:
    """README: cosine schedule with linear warm-up. Step s (1-based) runs at peak * (s-1)/W during the W warm-up
    steps, then at peak * (1 + cos(pi * (s-1-W) / (N-W))) / 2 over the N steps of the run."""
    records = [r for r in read_metrics(four_epoch_run / "metrics.jsonl") if "train/learning_rate" in r]
    peak, warmup, total = 1e-3, 4, 16  # the tiny preset's lr; 39 windows // 8 = 4 steps per epoch, 4 epochs
    assert [r["train/global_step"] for r in records] == list(range(1, total + 1))
    want = [peak * c / warmup if c < warmup else peak * (1 + math.cos(math.pi * (c - warmup) / (total - warmup))) / 2
            for c in range(total)]
    np.testing.assert_allclose([r["train/learning_rate"] for r in records], want, rtol=1e-6, atol=1e-12)


def test_keep_every_keeps_loadable_weights_of_those_epochs(four_epoch_run: Path) -> None:
    out = four_epoch_run
    assert sorted(p.name for p in (out / "epochs").iterdir()) == ["epoch-00002", "epoch-00004"]
    for epoch in (2, 4):
        kept = out / "epochs" / f"epoch-{epoch:05d}"
        assert json.loads((kept / "config.json").read_text())["epoch"] == epoch
        assert not (kept / "training_state.safetensors").exists()  # weights only, no optimiser state
        load_policy(kept, device="cpu")
    # the last epoch's kept weights are the EMA weights that last/ holds
    from safetensors.torch import load_file

    a, b = load_file(out / "epochs" / "epoch-00004" / "model.safetensors"), load_file(out / "last" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    with pytest.raises(ValueError, match="keep_every must be positive"):
        TrainConfig(task="x", keep_every=0)


def test_early_stopping_ends_a_real_run(zarr_path: Path, tmp_path: Path) -> None:
    """With --lr 1e-12 every update rounds away, so each validation repeats the first score exactly: with
    patience 1 the run stops after epoch 2 of 10, saved, best/ from epoch 1."""
    out = tmp_path / "early"
    assert main([*TINY, "--zarr-path", str(zarr_path), "--output-dir", str(out), "--epochs", "10", "--lr", "1e-12",
                 "--lr-scheduler", "constant", "--lr-warmup-steps", "0", "--best-metric", "val_loss",
                 "--early-stopping-patience", "1", "--save-every", "5"]) == 0
    records = read_metrics(out / "metrics.jsonl")
    val = [(r["train/epoch"], r["val/loss"]) for r in records if "val/loss" in r]
    assert [e for e, _ in val] == [1, 2] and val[0][1] == val[1][1]
    assert max(r["train/epoch"] for r in records) == 2
    assert json.loads((out / "last" / "config.json").read_text())["epoch"] == 2  # saved although 2 % 5 != 0
    assert json.loads((out / "best" / "config.json").read_text())["epoch"] == 1


def test_all_agents_trains_each_agent_on_its_own_dataset(tmp_path: Path) -> None:
    """README: train.py --task T --all-agents trains every agent of T found under --data-root, one after the other."""
    root, out = tmp_path / "zarr", tmp_path / "ck"
    data = [write_synthetic_dataset(root / f"Pair-rf_Agent{i}_4.zarr", seed=i) for i in range(2)]
    assert main([*TINY, "--task", "Pair-rf", "--all-agents", "--data-root", str(root), "--output-dir", str(out),
                 "--epochs", "1", "--best-metric", "val_loss"]) == 0
    from rf_dp_agents.data import SequenceDataset

    weights = []
    for i, path in enumerate(data):
        run = out / f"Pair-rf_Agent{i}"
        doc = json.loads((run / "run.json").read_text())
        assert doc["dataset"]["hash"] == SequenceDataset(path).content_hash
        assert json.loads((run / "last" / "config.json").read_text())["epoch"] == 1
        weights.append(load_policy(run, device="cpu").model.noise_pred_net.final_conv[1].weight)
    assert not torch.equal(weights[0], weights[1])


def test_early_stopping_tracker() -> None:
    tracker = BestTracker(patience=2)
    assert [tracker.update(v) for v in (1.0, 0.9, 0.95, 0.9)] == [True, True, False, False]
    assert tracker.best == 0.9 and tracker.should_stop
    assert not BestTracker(None).should_stop


def test_ema_decay_follows_chi_et_al() -> None:
    ema = EMA(torch.nn.Linear(2, 2), power=0.75, inv_gamma=1.0, max_decay=0.9999)
    assert ema.decay(0) == 0.0
    assert ema.decay(1) == pytest.approx(1 - 2**-0.75)
    assert ema.decay(10**9) == 0.9999
    model = torch.nn.Linear(2, 2)
    ema = EMA(model)
    with torch.no_grad():
        model.weight.add_(1.0)
    ema.update(model)  # decay 0: a copy
    assert torch.allclose(ema.averaged.weight, model.weight)
    before = ema.averaged.weight.clone()
    with torch.no_grad():
        model.weight.add_(1.0)
    ema.update(model)  # decay 1 - 2**-0.75
    expected = before + (model.weight - before) * 2**-0.75
    assert torch.allclose(ema.averaged.weight, expected) and ema.optimization_step == 2


def test_two_camera_run(tmp_path: Path) -> None:
    cams = ("img", "img_head_camera_global")
    data = write_synthetic_dataset(tmp_path / "Two-rf_Agent0_4.zarr", extra_cameras=cams[1:])
    out = tmp_path / "run"
    assert main([*TINY, "--zarr-path", str(data), "--output-dir", str(out), "--epochs", "1",
                 "--model.camera-keys", *cams]) == 0
    policy = load_policy(out, device="cpu")
    assert policy.config.camera_keys == cams
    img = np.zeros((1, 32, 32, 3), dtype=np.uint8)
    action, _ = policy.predict({"img": img, "img_head_camera_global": img, "state": np.zeros((1, 8), np.float32)})
    assert action.shape == (1, 8) and np.isfinite(action).all()
