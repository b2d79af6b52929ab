"""The trainer's speed settings on the CPU: bf16 autocast, a channels_last encoder, resume across layouts."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from rf_dp_agents import load_policy
from rf_dp_agents.data.synthetic import write_synthetic_dataset
from rf_dp_agents.training import preset_config
from rf_dp_agents.training.cli import main
from rf_dp_agents.training.distributed import DistInfo
from rf_dp_agents.training.ema import EMA
from rf_dp_agents.training.graphed import ema_step_, make_graph_safe, portable_state_dict
from rf_dp_agents.training.loop import Trainer, match_param_layout, plan_jobs
from rf_dp_agents.training.metrics import read_metrics

TINY = ["--preset", "tiny", "--device", "cpu", "--batch-size", "8", "--no-progress"]


@pytest.fixture(scope="module")
def zarr_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_synthetic_dataset(tmp_path_factory.mktemp("data") / "Synthetic-rf_Agent0_4.zarr")


def _trainer(zarr_path: Path, out: Path, **overrides) -> Trainer:
    cfg = preset_config("tiny", zarr_path=zarr_path, output_dir=out, device="cpu", progress=False, **overrides)
    (job,) = plan_jobs(cfg)
    return Trainer(cfg, job, DistInfo(rank=0, world_size=1, local_rank=0, device=torch.device("cpu")))


def test_cpu_defaults_are_fp32_contiguous_eager(zarr_path: Path, tmp_path: Path) -> None:
    trainer = _trainer(zarr_path, tmp_path / "run")
    assert trainer.autocast_dtype is None and not trainer.channels_last and not trainer.cuda_graphs
    assert not trainer.compiled
    trainer._setup()
    conv = trainer.policy.encoders[0].backbone.conv1.weight
    assert conv.is_contiguous()


def test_bf16_channels_last_run_learns_and_resumes(zarr_path: Path, tmp_path: Path) -> None:
    out = tmp_path / "bf16"
    flags = [*TINY, "--zarr-path", str(zarr_path), "--output-dir", str(out), "--precision", "bf16",
             "--channels-last", "on"]
    assert main([*flags, "--epochs", "3"]) == 0
    records = read_metrics(out / "metrics.jsonl")
    losses = [r["train/loss"] for r in records if "train/loss" in r]
    assert all(math.isfinite(v) for v in losses)
    assert sum(losses[-5:]) / 5 < sum(losses[:5]) / 5
    run = json.loads((out / "run.json").read_text())
    assert run["config"]["precision"] == "bf16" and run["config"]["channels_last"] == "on"

    # resume: the checkpoint's contiguous Adam moments take the channels_last parameters' layout
    assert main([*flags, "--epochs", "4", "--resume"]) == 0
    assert json.loads((out / "last" / "config.json").read_text())["epoch"] == 4
    policy = load_policy(out, device="cpu")  # checkpoints load into a plain (contiguous) model
    assert policy.model.encoders[0].backbone.conv1.weight.is_contiguous()


def test_match_param_layout_keeps_values() -> None:
    param = torch.nn.Parameter(torch.randn(4, 3, 5, 5).to(memory_format=torch.channels_last))
    opt = torch.optim.AdamW([param], lr=1e-3)
    param.grad = torch.randn_like(param)
    opt.step()
    saved = opt.state_dict()
    moments = {k: v.contiguous().clone() for k, v in opt.state[param].items() if v.shape == param.shape}
    fresh = torch.optim.AdamW([param], lr=1e-3)
    fresh.load_state_dict({**saved, "state": {0: {k: v.contiguous() for k, v in saved["state"][0].items()}}})
    assert fresh.state[param]["exp_avg"].stride() != param.stride()
    match_param_layout(fresh)
    for key, value in moments.items():
        assert fresh.state[param][key].stride() == param.stride()
        assert torch.equal(fresh.state[param][key], value)


def test_cuda_graphs_on_says_what_is_missing(zarr_path: Path, tmp_path: Path) -> None:
    trainer = _trainer(zarr_path, tmp_path / "graphs", cuda_graphs="on", grad_accum_steps=2, dataset_device="cpu")
    with pytest.raises(ValueError, match="--cuda-graphs on needs a CUDA device, --grad-accum-steps 1, the dataset on"):
        trainer.cuda_graphs


def test_optimizer_state_is_saved_portable() -> None:
    """A capturable optimiser (tensor learning rate) is saved with a float one, loadable by an eager run."""
    param = torch.nn.Parameter(torch.randn(3, 3))
    opt = torch.optim.AdamW([param], lr=1e-3)
    make_graph_safe(opt, torch.device("cpu"))
    assert isinstance(opt.param_groups[0]["lr"], torch.Tensor) and opt.param_groups[0]["capturable"]
    state = portable_state_dict(opt)
    assert state["param_groups"][0]["lr"] == pytest.approx(1e-3) and not state["param_groups"][0]["capturable"]
    eager = torch.optim.AdamW([param], lr=5.0)
    eager.load_state_dict(state)
    param.grad = torch.ones_like(param)
    eager.step()
    assert isinstance(eager.param_groups[0]["lr"], float) and torch.isfinite(param).all()


def test_graphed_ema_step_averages_outside_autograd() -> None:
    """The graphed step's EMA update gives decay * avg + (1 - decay) * current and leaves no autograd graph on
    the averaged copy (one would keep the parameters' AccumulateGrad nodes alive from step to step)."""
    model = torch.nn.Linear(3, 2)
    ema = EMA(model)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    averaged = [p for p in ema.averaged.parameters()]
    before = [p.detach().clone() for p in averaged]
    current = list(model.parameters())
    ema_step_(averaged, current, torch.tensor(0.75), torch.tensor(0.25))
    for avg, old, cur in zip(averaged, before, current):
        assert torch.allclose(avg, 0.75 * old + 0.25 * cur.detach())
        assert avg.grad_fn is None and not avg.requires_grad
