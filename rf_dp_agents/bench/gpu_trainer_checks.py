"""Checks of the trainer's CUDA-graph path on a GPU (``scripts/check_gpu_trainer.py``; the CPU test suite cannot
run it): graphed against eager learning, validation under CUDA graphs, bf16-weight sampling, and SIGKILL +
``--resume`` against an uninterrupted run, the page-locked host dataset (``--dataset-device pinned``) against the
GPU-resident one. Every run is the training script in its own process.
"""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file

from rf_dp_agents.data.synthetic import write_synthetic_dataset
from rf_dp_agents.offline_eval import SamplerSpec, action_errors
from rf_dp_agents.training.metrics import VAL_ACTION_MSE, read_metrics


@dataclass
class TrainerCheckArgs:
    """Check settings."""

    epochs: int = 4
    """Epochs of every run."""
    episodes: int = 24
    """Episodes of the synthetic dataset (40 steps each)."""
    loss_rtol: float = 0.1
    """Largest relative gap of the last epoch's mean loss, graphed bf16 against eager fp32."""
    resume_rtol: float = 0.02
    """Largest relative gap of per-step losses, and of all EMA weights, resumed against uninterrupted (or twice
    the gap of two uninterrupted runs, when that is larger)."""
    bf16_rtol: float = 0.05
    """Largest relative gap of the held-out action MSE, bf16-weight sampling against float32."""
    work_dir: Path | None = None
    """Where the data and runs go (default: a temporary folder, removed at the end)."""


def train(root: Path, data: Path, out: Path, epochs: int, *extra: str, wait: bool = True) -> subprocess.Popen | None:
    """Train the tiny preset on ``data`` into ``out`` through ``root``'s ``scripts/train.py`` in a new process
    (``extra``: more flags); wait for it (a failure exits with its stderr), or with ``wait=False`` return it."""
    cmd = [sys.executable, str(root / "scripts" / "train.py"), "--preset", "tiny", "--device", "cuda",
           "--zarr-path", str(data), "--output-dir", str(out), "--epochs", str(epochs), "--batch-size", "16",
           "--save-every", "1", "--log-flush-every", "1", "--no-progress", *extra]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    if not wait:
        return subprocess.Popen(cmd, cwd=root, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    done = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True, timeout=1800)
    if done.returncode != 0:
        raise SystemExit(f"training failed ({' '.join(cmd)}):\n{done.stderr[-4000:]}")
    return None


def step_losses(run: Path) -> dict[int, float]:
    """Training loss per global step of a run (from its metrics.jsonl)."""
    return {int(r["train/global_step"]): r["train/loss"] for r in read_metrics(run / "metrics.jsonl") if "train/loss" in r}


def last_epoch_mean(run: Path) -> float:
    """Mean training loss of a run's last epoch."""
    records = [r for r in read_metrics(run / "metrics.jsonl") if "train/loss" in r]
    last = max(r["train/epoch"] for r in records)
    values = [r["train/loss"] for r in records if r["train/epoch"] == last]
    return sum(values) / len(values)


def rel_gap(a: float, b: float) -> float:
    """``|a - b| / |b|``."""
    return abs(a - b) / max(abs(b), 1e-12)


def weight_gap(run: Path, reference: Path) -> tuple[float, str]:
    """Relative distance of the two runs' last EMA weights (all float tensors as one vector), and the name and
    relative distance of the tensor that differs most."""
    a = load_file(run / "last" / "model.safetensors")
    b = load_file(reference / "last" / "model.safetensors")
    keys = [k for k in b if b[k].is_floating_point()]
    diff = torch.cat([(a[k].float() - b[k].float()).flatten() for k in keys])
    total = (diff.norm() / torch.cat([b[k].float().flatten() for k in keys]).norm().clamp_min(1e-12)).item()
    each = {k: ((a[k].float() - b[k].float()).norm() / b[k].float().norm().clamp_min(1e-12)).item() for k in keys}
    worst = max(each, key=each.get)
    return total, f"{worst}: {100 * each[worst]:.1f}%"


def main(args: TrainerCheckArgs, root: Path) -> int:
    """Run every check, print one line each; 0 when all pass, 1 otherwise (``root``: the project folder)."""
    if not torch.cuda.is_available():
        raise SystemExit("scripts/check_gpu_trainer.py checks the CUDA path: no CUDA device is visible")
    with tempfile.TemporaryDirectory() as tmp:
        work = args.work_dir or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        data = write_synthetic_dataset(work / "check.zarr", n_episodes=args.episodes, episode_length=40)
        results: list[tuple[str, bool, str]] = []

        graphed, eager = work / "graphed", work / "eager"
        train(root, data, graphed, args.epochs)
        train(root, data, eager, args.epochs, "--cuda-graphs", "off", "--compile", "off")
        log = (graphed / "train.log").read_text()
        on = "CUDA graphs True" in log
        results.append(("graphed run uses the CUDA graph", on, "train.log: " + ("yes" if on else "no")))
        g, e = last_epoch_mean(graphed), last_epoch_mean(eager)
        results.append(("learns the same as eager fp32", rel_gap(g, e) <= args.loss_rtol,
                        f"last-epoch mean loss {g:.5f} vs {e:.5f} (gap {100 * rel_gap(g, e):.1f}%)"))

        vals = [r for r in read_metrics(graphed / "metrics.jsonl") if "val/loss" in r]
        finite = len(vals) == args.epochs and all(
            math.isfinite(r["val/loss"]) and math.isfinite(r.get(VAL_ACTION_MSE, math.nan)) for r in vals)
        results.append(("validation under CUDA graphs", finite,
                        f"{len(vals)} validations, last val/loss {vals[-1]['val/loss']:.5f}, "
                        f"val/action_mse {vals[-1].get(VAL_ACTION_MSE, math.nan):.5f}" if vals else "no validation"))

        specs = [SamplerSpec(name, 10, bf16) for name in ("ddpm", "ddim") for bf16 in (False, True)]
        errors = action_errors(graphed, specs, device="cuda")["errors"]
        gaps = {name: rel_gap(errors[f"{name}:10:bf16"]["mse"], errors[f"{name}:10"]["mse"])
                for name in ("ddpm", "ddim")}
        results.append(("bf16-weight sampling keeps the held-out action error", max(gaps.values()) <= args.bf16_rtol,
                        "; ".join(f"{name}-10 MSE {errors[f'{name}:10']['mse']:.5f} float32 vs "
                                  f"{errors[f'{name}:10:bf16']['mse']:.5f} bf16 (gap {100 * gap:.1f}%)"
                                  for name, gap in gaps.items())))

        killed = work / "killed"
        proc = train(root, data, killed, args.epochs, wait=False)
        assert proc is not None
        try:
            while not (killed / "last").is_symlink():
                if proc.poll() is not None:
                    raise SystemExit("the run to be killed ended before its first snapshot")
                time.sleep(0.05)
            os.kill(proc.pid, signal.SIGKILL)
        finally:
            proc.wait(timeout=120)
        train(root, data, killed, args.epochs, "--resume")
        straight, resumed = step_losses(graphed), step_losses(killed)
        steps = sorted(set(straight) & set(resumed))
        loss_gap = max(rel_gap(resumed[s], straight[s]) for s in steps)
        again = work / "graphed_again"  # a second uninterrupted run: how far two runs drift apart on their own
        train(root, data, again, args.epochs)
        gap, worst = weight_gap(killed, graphed)
        floor, floor_worst = weight_gap(again, graphed)
        again_losses = step_losses(again)
        loss_floor = max(rel_gap(again_losses[s], straight[s]) for s in steps)
        ok = (steps == sorted(straight) and loss_gap <= max(args.resume_rtol, 2 * loss_floor)
              and gap <= max(args.resume_rtol, 2 * floor))
        results.append(("SIGKILL + --resume equals uninterrupted", ok,
                        f"{len(steps)} steps; resumed vs uninterrupted: largest loss gap {100 * loss_gap:.2f}%, "
                        f"EMA weight gap {100 * gap:.2f}% (largest in {worst}); two uninterrupted runs: "
                        f"{100 * loss_floor:.2f}%, {100 * floor:.2f}% (largest in {floor_worst})"))

        pinned = work / "pinned"  # the dataset page-locked on the host: batches gathered on the CPU, same graph
        train(root, data, pinned, args.epochs, "--dataset-device", "pinned")
        host = step_losses(pinned)
        plog = (pinned / "train.log").read_text()
        fed = "CUDA graphs True" in plog and "page-locked host memory" in plog
        host_gap = max(rel_gap(host[s], straight[s]) for s in steps) if sorted(host) == sorted(straight) else math.inf
        results.append(("page-locked host dataset feeds the same CUDA graph", fed and host_gap <= max(
            args.resume_rtol, 2 * loss_floor), f"train.log: {'graph and page-locked data' if fed else 'not both'}; "
            f"largest per-step loss gap to the GPU-resident run {100 * host_gap:.2f}% over {len(host)} steps"))

    for name, ok, detail in results:
        print(f"{'PASS' if ok else 'FAIL'}  {name}: {detail}")
    return 0 if all(ok for _, ok, _ in results) else 1


__all__ = ["TrainerCheckArgs", "last_epoch_mean", "main", "rel_gap", "step_losses", "train", "weight_gap"]
