"""The LR schedule fitted to a --max-minutes budget: the estimate of the epochs that fit, the schedule's length
changed mid-run and carried through a resume, and a real tiny run on the CPU driven by a clock of the test's own."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from rf_dp_agents.data.synthetic import write_synthetic_dataset
from rf_dp_agents.model.schedulers import WarmupCosine, cosine_schedule_with_warmup
from rf_dp_agents.training import budget as budget_mod
from rf_dp_agents.training.budget import Budget, epochs_that_fit, schedule_steps, set_schedule_steps
from rf_dp_agents.training.cli import main
from rf_dp_agents.training.metrics import read_metrics

TINY = ["--preset", "tiny", "--device", "cpu", "--batch-size", "8", "--no-progress", "--lr-warmup-steps", "2"]


def test_epochs_that_fit_counts_training_and_validations() -> None:
    # 10 s per epoch, a 5 s validation every 2nd epoch and after the last: 3 epochs = 30 + 5 (epoch 2) + 5 (last)
    assert epochs_that_fit(40.0, 10.0, 5.0, 0, 100, 2) == 3
    assert epochs_that_fit(39.9, 10.0, 5.0, 0, 100, 2) == 2  # epoch 2 validates once: 20 + 5
    assert epochs_that_fit(1000.0, 10.0, 5.0, 4, 8, 2) == 8  # capped at --epochs
    assert epochs_that_fit(3.0, 10.0, 5.0, 4, 8, 2) == 4  # nothing more fits: the epoch just run is the last
    with pytest.raises(ValueError, match="train_s > 0"):
        epochs_that_fit(10.0, 0.0, 1.0, 0, 5, 1)


def test_budget_estimates_from_epoch_spans_without_validations() -> None:
    readings = iter([0.0, 0.0, 30.0, 32.0, 37.0, 39.0, 40.0])
    b = Budget(max_minutes=1.0, clock=lambda: next(readings))
    b.start()  # 0
    b.epoch_started()  # 0: the first epoch (capture, warm-up) takes 30 s
    b.record_train(29.0)
    b.epoch_started()  # 30
    b.record_train(1.5)
    b.record_validation(0.5)  # a span of 2 s, 0.5 of it validating
    b.epoch_started()  # 32
    b.record_train(1.5)
    b.record_validation(3.0)  # 5 s, 3 of them validating
    b.epoch_started()  # 37
    b.record_train(1.5)
    assert b.epoch_seconds() == pytest.approx(1.75)  # median of 1.5 and 2 (the first span left out)
    # at 39 s of 60, after epoch 4's training (its tail: 0.25 s): 20.75 s left for epochs of 1.75 s, a 3 s
    # validation every 5th epoch and after the last
    assert b.fitted_epochs(epochs_done=4, max_epochs=50, val_every=5) == \
        epochs_that_fit(60.0 - 39.0 - 0.25, 1.75, 3.0, 4, 50, 5)
    assert b.spent() is False  # the reading at 40 s
    assert Budget(max_minutes=None).fitted_epochs(3, 50, 10) == 50


def test_schedule_length_changes_and_survives_state_dict() -> None:
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = cosine_schedule_with_warmup(opt, 0, 100)
    for _ in range(10):
        opt.step()
        sched.step()
    assert set_schedule_steps(sched, 20) and schedule_steps(sched) == 20
    assert sched.lr_lambdas[0](20) == 0.0 and sched.lr_lambdas[0](10) == pytest.approx(0.5)
    state = sched.state_dict()
    fresh = cosine_schedule_with_warmup(torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0), 0, 100)
    fresh.load_state_dict(state)
    assert isinstance(fresh.lr_lambdas[0], WarmupCosine) and schedule_steps(fresh) == 20
    constant = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 1.0)
    assert not set_schedule_steps(constant, 5) and schedule_steps(constant) is None


@pytest.fixture(scope="module")
def zarr_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_synthetic_dataset(tmp_path_factory.mktemp("data") / "Synthetic-rf_Agent0_4.zarr")


def _run(zarr: Path, out: Path, monkeypatch: pytest.MonkeyPatch, *extra: str) -> list[dict]:
    """A tiny run whose budget clock advances one second per reading: a 0.5-minute budget is 30 readings."""
    ticks = iter(float(k) for k in range(10**6))
    monkeypatch.setattr(budget_mod, "monotonic", lambda: next(ticks))
    assert main([*TINY, "--zarr-path", str(zarr), "--output-dir", str(out), "--epochs", "50", "--val-every", "3",
                 "--max-minutes", "0.5", *extra]) == 0
    return read_metrics(out / "metrics.jsonl")


def _last_lr(records: list[dict]) -> tuple[int, float]:
    steps = [r for r in records if "train/learning_rate" in r]
    return steps[-1]["train/epoch"], steps[-1]["train/learning_rate"]


def test_fitted_schedule_ends_at_zero_within_the_budget(zarr_path: Path, tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch,
                                                        caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level("INFO", logger="rf_dp_agents"):
        fitted = _run(zarr_path, tmp_path / "fitted", monkeypatch)
    epochs, lr = _last_lr(fitted)
    peak = max(r["train/learning_rate"] for r in fitted if "train/learning_rate" in r)
    assert 2 < epochs < 50
    fits = [line for line in caplog.text.splitlines() if "LR schedule fitted to the --max-minutes budget" in line]
    assert "after epoch 1:" in fits[0] and f": {epochs} epochs (was" in fits[-1]  # refitted as epochs are timed
    assert "--max-minutes budget of 0.5 minutes is spent" not in caplog.text  # ended by the schedule, in time
    assert lr < 0.05 * peak  # the last step is the cosine's end
    assert [r["train/epoch"] for r in fitted if "val/loss" in r][-1] == epochs  # the last epoch validated
    cut = _run(zarr_path, tmp_path / "cut", monkeypatch, "--no-fit-schedule")
    cut_epochs, cut_lr = _last_lr(cut)
    peak = max(r["train/learning_rate"] for r in cut if "train/learning_rate" in r)
    assert cut_lr > 0.9 * peak and cut_epochs < 50  # stopped by the budget with the --epochs schedule barely begun


def test_resume_keeps_the_fitted_length_and_plain_runs_follow_epochs(zarr_path: Path, tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "resumed"
    records = _run(zarr_path, out, monkeypatch)
    epochs, _ = _last_lr(records)
    # Resuming the finished run under the same budget: the saved, fitted length is kept, so nothing is left to do.
    records = _run(zarr_path, out, monkeypatch, "--resume")
    assert _last_lr(records)[0] == epochs
    # Without a budget a resumed schedule spans --epochs again: training continues past the fitted end.
    assert main([*TINY, "--zarr-path", str(zarr_path), "--output-dir", str(out), "--epochs", str(epochs + 1),
                 "--val-every", "3", "--resume"]) == 0
    epochs_after, lr_after = _last_lr(read_metrics(out / "metrics.jsonl"))
    assert epochs_after == epochs + 1 and math.isfinite(lr_after)
