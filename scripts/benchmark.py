"""GPU benchmark: training throughput and predict() latency at the seed config, side by side in one run.

Measured in one process on one GPU, each figure after warm-up:
  * fast: the trainer's default GPU path (dataset held on the GPU as uint8, the whole optimiser step captured
    in one CUDA graph, bf16 autocast, channels_last encoder with Triton GroupNorm, fused AdamW), then the same
    trainer with these levers switched off (TRAINER_ROWS);
  * eager: the same model as a plain eager fp32 step fed by a standard DataLoader (what users run today);
  * lerobot: lerobot's DiffusionPolicy at the same shapes (when it is importable), synthetic GPU batch;
  * predict(): one action chunk at batch 1 and 32, DDPM-100, DDPM-10 and DDIM-10: eager, the default CUDA
    graph, and the graph with one lever off or all of them (PREDICT_SETTINGS);
  * the fast path's loss curve against the eager path's over the same steps.
Writes benchmarks/results/<date>-<gpu>.json (or --out) and prints a table that ends with the goals (TARGETS),
each with its measured value and whether it is met; ``--readme-from FILE`` renders a
results JSON into the README's performance table instead of measuring.

  python scripts/benchmark.py                         # on a CUDA machine
  python scripts/benchmark.py --readme-from benchmarks/results/2026-11-29-h200.json
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import math
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import tyro

ROOT = Path(__file__).resolve().parent.parent
README_START, README_END = "<!-- perf-table:start -->", "<!-- perf-table:end -->"


@dataclass
class Args:
    """Benchmark settings; defaults are the seed config (13,617 training windows, 240x320, batch 64)."""

    data: Path = Path("data/bench/seed_size.zarr")
    """Synthetic dataset path (written when missing)."""
    n_windows: int = 13_617
    """Training windows in the synthetic dataset (the seed's LiftBarrier epoch)."""
    n_episodes: int = 150
    """Episodes in the synthetic dataset."""
    batch_size: int = 64
    """Batch per step."""
    fast_steps: int = 300
    """Timed steps of the fast path."""
    eager_steps: int = 60
    """Timed steps of the eager DataLoader path and of lerobot."""
    warmup_steps: int = 15
    """Untimed steps before timing."""
    num_workers: int = 8
    """DataLoader workers of the eager path."""
    curve_steps: int = 400
    """Steps of the fast-vs-eager loss-curve comparison."""
    trainer_epochs: int = 3
    """Epochs of each end-to-end trainer run (the last one is timed)."""
    trainer_rows: tuple[str, ...] = ("fast", "fast_no_cuda_graphs", "trainer_no_compile", "compiled_fp32")
    """End-to-end trainer rows to run (names of TRAINER_ROWS)."""
    predict_repeats: int = 20
    """Timed predict() calls per setting."""
    lerobot: bool = True
    """Include lerobot's DiffusionPolicy when it imports."""
    levers: bool = True
    """Measure each speed lever (channels_last, bf16, CUDA graph, torch.compile) and profile the eager step."""
    only: str | None = None
    """Run one part only: 'trainer' (the end-to-end trainer rows, written to --out), 'levers', 'predict' or
    'profile'."""
    out: Path | None = None
    """Results JSON (default benchmarks/results/<date>-<gpu>.json)."""
    readme_from: Path | None = None
    """Render this results JSON into README.md's performance table and exit."""


def sync() -> None:
    torch.cuda.synchronize()


def timed(fn: Callable[[], Any], steps: int) -> float:
    sync()
    start = time.perf_counter()
    for _ in range(steps):
        fn()
    sync()
    return time.perf_counter() - start


def build_policy(device: torch.device, dataset, **overrides):
    from rf_dp_agents.config import ModelConfig
    from rf_dp_agents.model import DiffusionPolicy

    torch.manual_seed(0)
    cfg = ModelConfig(image_shape=dataset.shapes["img"], **overrides)
    return DiffusionPolicy(cfg, dataset.fit_normalizer()).to(device).train()


TRAINER_ROWS: dict[str, dict[str, str]] = {
    "fast": {},
    "fast_no_cuda_graphs": {"cuda_graphs": "off", "compile": "off", "precision": "bf16", "channels_last": "on"},
    "trainer_no_compile": {"cuda_graphs": "off", "compile": "off"},
    "compiled_fp32": {"cuda_graphs": "off"},
}
"""Trainer settings of each end-to-end row: the default on CUDA (one captured CUDA graph per step, bf16
autocast, channels_last encoder with the Triton GroupNorm), the same without the graph, the plain eager fp32
trainer, and ``compiled_fp32``, the default before CUDA graphs (torch.compile, TF32, NCHW)."""


def trainer_run(args: Args, name: str, out_dir: Path) -> dict[str, Any]:
    """The real trainer end to end (zarr -> GPU-resident data -> steps -> validation -> checkpoints) for
    ``args.trainer_epochs`` epochs with the settings ``TRAINER_ROWS[name]``; throughput from its own
    metrics.jsonl (last epoch, after warm-up); peak memory above what was allocated before the run."""
    import gc
    import shutil

    from rf_dp_agents.training.config import preset_config
    from rf_dp_agents.training.loop import train

    run_dir = out_dir / name
    shutil.rmtree(run_dir, ignore_errors=True)
    cfg = preset_config(
        "default", zarr_path=args.data, epochs=args.trainer_epochs, val_ratio=0.0, output_dir=run_dir,
        progress=False, batch_size=args.batch_size, **TRAINER_ROWS[name],
    )
    torch._dynamo.reset()
    gc.collect()
    torch.cuda.empty_cache()
    before = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    train(cfg)
    wall = time.perf_counter() - t0
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    epochs = [r for r in records if "train/samples_per_s" in r]
    losses = [r["train/loss"] for r in records if "train/loss" in r and "train/learning_rate" in r]
    last = epochs[-1]
    return {
        "settings": TRAINER_ROWS[name],
        "samples_per_s": last["train/samples_per_s"],
        "step_ms": 1000 * args.batch_size / last["train/samples_per_s"],
        "epoch_samples_per_s": [r["train/samples_per_s"] for r in epochs],
        "data_wait_s_last_epoch": last.get("train/data_wait_s"),
        "wall_s": wall,
        "peak_gpu_mem_gib": (torch.cuda.max_memory_allocated() - before) / 2**30,
        "losses": losses,
    }


def lever_variants(args: Args, dataset, device) -> list[dict[str, Any]]:
    """Step time of the known levers, each alone and combined: channels_last, bf16 autocast, CUDA graph,
    torch.compile. Eager rows run the plain step on GPU-resident data (fused AdamW, TF32)."""
    import contextlib

    from rf_dp_agents.training.ema import EMA
    from rf_dp_agents.training.graphed import GraphedTrainStep, make_optimizer

    rows = []
    variants = [
        dict(graph=False, channels_last=False, bf16=False, compile=False),
        dict(graph=False, channels_last=True, bf16=False, compile=False),
        dict(graph=False, channels_last=False, bf16=True, compile=False),
        dict(graph=False, channels_last=True, bf16=True, compile=False),
        dict(graph=True, channels_last=True, bf16=False, compile=False),
        dict(graph=True, channels_last=True, bf16=True, compile=False),
        dict(graph=False, channels_last=False, bf16=False, compile=True),
        dict(graph=False, channels_last=True, bf16=True, compile=True),
    ]
    ids = torch.arange(args.batch_size, device=device)
    for v in variants:
        row: dict[str, Any] = dict(v)
        try:
            policy = build_policy(device, dataset)
            if v["channels_last"]:
                policy = policy.to(memory_format=torch.channels_last)
            opt = make_optimizer(policy.parameters(), 1e-4, (0.95, 0.999), 1e-6, device, graph_safe=v["graph"])
            ema = EMA(policy)
            torch.cuda.reset_peak_memory_stats()
            if v["graph"]:
                step = GraphedTrainStep(policy, opt, ema, dataset, args.batch_size,
                                        autocast_dtype=torch.bfloat16 if v["bf16"] else None)
                one = lambda: step(ids, 0)  # noqa: E731
            else:
                loss_fn = torch.compile(policy.compute_loss) if v["compile"] else policy.compute_loss

                def one() -> None:
                    opt.zero_grad(set_to_none=True)
                    amp = torch.autocast("cuda", dtype=torch.bfloat16) if v["bf16"] else contextlib.nullcontext()
                    with amp:
                        loss = loss_fn(dataset.get_batch(ids))
                    loss.backward()
                    opt.step()
                    ema.update(policy)
            t0 = time.perf_counter()
            timed(one, 5)
            row["warmup_s"] = time.perf_counter() - t0
            seconds = timed(one, 30)
            row.update(step_ms=1000 * seconds / 30, samples_per_s=30 * args.batch_size / seconds,
                       peak_gpu_mem_gib=torch.cuda.max_memory_allocated() / 2**30)
        except Exception as exc:  # a lever that fails here is reported, not fatal
            row["error"] = f"{type(exc).__name__}: {str(exc)[:300]}"
        print("  ", row, flush=True)
        rows.append(row)
        policy = opt = ema = step = None  # free this variant's model before the next one
        torch.cuda.empty_cache()
    return rows


def profile_step(args: Args, dataset, device, rows: int = 25, fast: bool = False) -> str:
    """Top CUDA kernels of one training step (torch.profiler) as a text table: the plain eager step, or
    with ``fast`` the compiled channels_last bf16 step."""
    import contextlib

    from torch.profiler import ProfilerActivity, profile

    policy = build_policy(device, dataset)
    if fast:
        policy = policy.to(memory_format=torch.channels_last)
    opt = torch.optim.AdamW(policy.parameters(), lr=1e-4, fused=True)
    ids = torch.arange(args.batch_size, device=device)
    loss_fn = torch.compile(policy.compute_loss) if fast else policy.compute_loss

    def one() -> None:
        opt.zero_grad(set_to_none=True)
        with torch.autocast("cuda", dtype=torch.bfloat16) if fast else contextlib.nullcontext():
            loss = loss_fn(dataset.get_batch(ids))
        loss.backward()
        opt.step()

    timed(one, 5)
    with profile(activities=[ProfilerActivity.CUDA, ProfilerActivity.CPU]) as prof:
        timed(one, 5)
    return prof.key_averages().table(sort_by="cuda_time_total", row_limit=rows)


def eager_dataloader(args: Args, cpu_dataset, device) -> dict[str, Any]:
    """Plain eager fp32 step fed by torch's DataLoader (PyTorch defaults: TF32 off for matmuls)."""
    before = torch.cuda.memory_allocated()
    from torch.utils.data import DataLoader

    from rf_dp_agents.training.ema import EMA

    policy = build_policy(device, cpu_dataset)
    opt = torch.optim.AdamW(policy.parameters(), lr=1e-4, betas=(0.95, 0.999), weight_decay=1e-6)
    ema = EMA(policy)
    loader = DataLoader(cpu_dataset, batch_size=args.batch_size, shuffle=True, num_workers=args.num_workers,
                        pin_memory=True, drop_last=True, persistent_workers=True)
    it = iter(loader)
    torch.cuda.reset_peak_memory_stats()

    def one() -> None:
        nonlocal it
        try:
            batch = next(it)
        except StopIteration:
            it = iter(loader)
            batch = next(it)
        batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
        opt.zero_grad(set_to_none=True)
        loss = policy.compute_loss(batch)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(policy.parameters(), math.inf)
        opt.step()
        ema.update(policy)
        loss.item()

    timed(one, args.warmup_steps)
    seconds = timed(one, args.eager_steps)
    return {
        "samples_per_s": args.eager_steps * args.batch_size / seconds,
        "step_ms": 1000 * seconds / args.eager_steps,
        "peak_gpu_mem_gib": (torch.cuda.max_memory_allocated() - before) / 2**30,
    }


def lerobot_step(args: Args, device, image_hw) -> dict[str, Any]:
    """lerobot's DiffusionPolicy training step at the same shapes, synthetic GPU batch, fp32 eager."""
    before = torch.cuda.memory_allocated()
    from lerobot.configs.types import FeatureType, PolicyFeature
    from lerobot.policies.diffusion.configuration_diffusion import DiffusionConfig
    from lerobot.policies.diffusion.modeling_diffusion import DiffusionPolicy as LeRobotDP

    cfg = DiffusionConfig(
        input_features={
            "observation.image": PolicyFeature(type=FeatureType.VISUAL, shape=(3, *image_hw)),
            "observation.state": PolicyFeature(type=FeatureType.STATE, shape=(8,)),
        },
        output_features={"action": PolicyFeature(type=FeatureType.ACTION, shape=(8,))},
        n_obs_steps=2, horizon=16, n_action_steps=8, crop_shape=None, pretrained_backbone_weights=None,
        use_group_norm=True, down_dims=(256, 512, 1024), device=str(device),
    )
    policy = LeRobotDP(cfg).to(device).train()
    opt = torch.optim.AdamW(policy.parameters(), lr=1e-4, betas=(0.95, 0.999), weight_decay=1e-6)
    b = args.batch_size
    batch = {
        "observation.image": torch.rand(b, 2, 3, *image_hw, device=device),
        "observation.state": torch.randn(b, 2, 8, device=device),
        "action": torch.randn(b, 16, 8, device=device),
        "action_is_pad": torch.zeros(b, 16, dtype=torch.bool, device=device),
    }
    torch.cuda.reset_peak_memory_stats()

    def one() -> None:
        opt.zero_grad(set_to_none=True)
        out = policy.forward(batch)
        loss = out[0] if isinstance(out, tuple) else out
        loss.backward()
        opt.step()
        loss.item()

    timed(one, args.warmup_steps)
    seconds = timed(one, args.eager_steps)
    return {
        "samples_per_s": args.eager_steps * b / seconds,
        "step_ms": 1000 * seconds / args.eager_steps,
        "peak_gpu_mem_gib": (torch.cuda.max_memory_allocated() - before) / 2**30,
    }


PREDICT_SETTINGS: dict[str, dict[str, bool]] = {
    "eager_ms": {"cuda_graphs": False},
    "cuda_graph_ms": {},
    "cuda_graph_no_compile_ms": {"compile_graphs": False},
    "cuda_graph_fp32_ms": {"tf32": False},
    "previous_default_ms": {"compile_graphs": False, "channels_last_graphs": False, "film_tables": False,
                            "matmul": False},
}
"""predict() columns: the policy's default on CUDA (CUDA graph of the compiled U-Net, matmul convolutions, FiLM
tables, channels_last encoder, TF32) with one setting changed, and ``previous_default_ms``: a plain CUDA graph
of the cuDNN convolutions with per-step FiLM and an NCHW encoder (the default before these levers)."""


def predict_latency(args: Args, dataset, device) -> list[dict[str, Any]]:
    """Milliseconds per action chunk through ``predict_action`` (encoder + full denoising loop) for every
    column of ``PREDICT_SETTINGS``; each setting on a fresh policy with the same weights."""
    from rf_dp_agents.model.unet import set_matmul_convolutions

    rows = []
    for sampler, steps in (("ddpm", 100), ("ddpm", 10), ("ddim", 10)):
        for batch in (1, 32):
            obs = dataset.get_batch(torch.arange(batch, device=dataset.device))
            obs = {"img": obs["img"].to(device), "state": obs["state"].to(device)}
            row: dict[str, Any] = {"sampler": sampler, "steps": steps, "batch": batch}
            for name, setting in PREDICT_SETTINGS.items():
                setting = dict(setting)
                policy = build_policy(device, dataset, sampler=sampler, num_inference_steps=steps).eval()
                set_matmul_convolutions(policy, setting.pop("matmul", True))
                tf32 = setting.pop("tf32", True)
                for attr, value in setting.items():
                    setattr(policy, attr, value)
                with torch.backends.cudnn.flags(enabled=True, benchmark=True, allow_tf32=tf32):
                    matmul_tf32, torch.backends.cuda.matmul.allow_tf32 = torch.backends.cuda.matmul.allow_tf32, tf32
                    try:
                        call = lambda: policy.predict_action(obs)  # noqa: E731
                        timed(call, 3)
                        row[name] = 1000 * timed(call, args.predict_repeats) / args.predict_repeats
                    finally:
                        torch.backends.cuda.matmul.allow_tf32 = matmul_tf32
                if setting.get("compile_graphs", True) and setting.get("cuda_graphs", True):
                    row.setdefault("compiled", policy.compile_graphs)  # False when compilation failed
            rows.append(row)
            print(f"  predict {row}", flush=True)
    return rows


def speed_ratios(training: dict[str, dict[str, Any]]) -> dict[str, float]:
    """``fast_vs_<row>``: the default trainer's samples/s over each other measured row's."""
    fast = training.get("fast", {}).get("samples_per_s")
    if fast is None:
        return {}
    return {f"fast_vs_{name}": fast / row["samples_per_s"]
            for name, row in training.items() if name != "fast" and "samples_per_s" in row}


def curve_agreement(fast: list[float], eager: list[float], window: int = 50) -> dict[str, Any]:
    """Windowed means of both loss curves and their largest relative gap."""
    n = min(len(fast), len(eager)) // window * window
    f = np.asarray(fast[:n]).reshape(-1, window).mean(1)
    e = np.asarray(eager[:n]).reshape(-1, window).mean(1)
    return {
        "window": window,
        "fast_means": f.tolist(),
        "eager_means": e.tolist(),
        "max_rel_gap": float(np.max(np.abs(f - e) / np.maximum(np.abs(e), 1e-8))),
    }


BASELINES = {"eager_dataloader": "vs eager DataLoader", "trainer_no_compile": "vs eager fp32 trainer"}
"""Rows the ratio column can be taken against, in order of preference (the first one the results hold)."""


def render_table(res: dict[str, Any], source: str) -> str:
    """Markdown performance tables of one results JSON (``source``: its path, named in the first line)."""
    tr = res["training"]
    base_key = next(key for key in BASELINES if "samples_per_s" in tr.get(key, {}))
    base = tr[base_key]["samples_per_s"]
    lines = [
        f"Measured {res['date']} on one {res['gpu']} (torch {res['torch']}; `{source}`), seed config: ResNet18-GN + "
        f"U-Net 256/512/1024, 240x320 images, To 2, T 16, batch {res['batch_size']}, {res['n_windows']:,} windows per "
        "epoch.",
        "",
        f"| training path | samples/s | ms/step | peak GPU memory | {BASELINES[base_key]} |",
        "|---|---|---|---|---|",
    ]
    names = {
        "fast": "rf_dp_agents trainer, default on CUDA (GPU-resident data, whole step in one CUDA graph, bf16 "
                "autocast, channels_last encoder with Triton GroupNorm, fused AdamW)",
        "fast_no_cuda_graphs": "the same, --cuda-graphs off --compile off --precision bf16 --channels-last on",
        "compiled_fp32": "rf_dp_agents trainer, --cuda-graphs off (torch.compile, TF32, NCHW: the previous default)",
        "trainer_no_compile": "rf_dp_agents trainer, --cuda-graphs off --compile off (eager, TF32, NCHW)",
        "eager_dataloader": "plain eager fp32 step + torch DataLoader (8 workers)",
        "lerobot": "lerobot 0.6.1 DiffusionPolicy, fp32 eager, synthetic GPU batch",
    }
    for key in names:
        row = tr.get(key)
        if not row or "samples_per_s" not in row:
            continue
        lines.append(f"| {names[key]} | {row['samples_per_s']:,.0f} | {row['step_ms']:.1f} | "
                     f"{row['peak_gpu_mem_gib']:.1f} GiB | {row['samples_per_s'] / base:.2f}x |")
    dataset = res.get("dataset_gib")
    if dataset is not None:  # results written since peak memory is counted per row
        lines += ["", "Peak GPU memory is each row's own: what it allocated above what the process held before it. "
                      f"The trainer rows include the trainer's GPU-resident copy of the dataset ({dataset:.1f} GiB at "
                      "this size)."]
    else:
        lines += ["", "Peak GPU memory is everything allocated in the benchmark process: it includes the benchmark's "
                      "own GPU copy of the dataset, and the trainer rows also the trainer's copy."]
    gap = res.get("loss_curves", {}).get("max_rel_gap")
    if gap is not None:
        window = res["loss_curves"]["window"]
        lines += ["", f"Loss curves of the default trainer and the eager fp32 trainer over the same steps "
                      f"({window}-step means) differ by at most {100 * gap:.1f}%."]
    if "samples_per_s" in tr.get("fast", {}):
        epoch_s = res["n_windows"] / tr["fast"]["samples_per_s"]
        lines += ["", f"300 epochs at the default trainer's rate: {300 * epoch_s / 60:.1f} minutes of steps "
                      f"({epoch_s:.1f} s per epoch; the seed reports 240 s per epoch on one GPU)."]
    rows = res.get("predict", [])
    if rows and "previous_default_ms" in rows[0]:
        lines += ["", "| predict() per chunk | batch | eager | CUDA graph (default) | default, TF32 off | CUDA graph, "
                      "U-Net not compiled | previous default (plain CUDA graph, cuDNN) | default vs previous |",
                  "|---|---|---|---|---|---|---|---|"]
        for row in rows:
            lines.append(f"| {row['sampler'].upper()}-{row['steps']} | {row['batch']} | {row['eager_ms']:.1f} ms | "
                         f"{row['cuda_graph_ms']:.2f} ms | {row['cuda_graph_fp32_ms']:.2f} ms | "
                         f"{row['cuda_graph_no_compile_ms']:.2f} ms | {row['previous_default_ms']:.2f} ms | "
                         f"{row['previous_default_ms'] / row['cuda_graph_ms']:.2f}x |")
        lines += ["", "The default CUDA graph replays the encoder (channels_last) and every denoising step of the "
                      "torch.compile'd U-Net, whose convolutions run as matrix multiplies, with every step's FiLM "
                      "conditioning computed before the loop."]
    elif rows:  # results written before the predict levers
        compiled = any("cuda_graph_compiled_ms" in row for row in rows)
        lines += ["", "| predict() per chunk | batch | eager | CUDA graph (default) | CUDA graph, TF32 off |"
                  + (" CUDA graph of the compiled U-Net |" if compiled else ""),
                  "|---|---|---|---|---|" + ("---|" if compiled else "")]
        for row in rows:
            lines.append(f"| {row['sampler'].upper()}-{row['steps']} | {row['batch']} | {row['eager_ms']:.1f} ms | "
                         f"{row['cuda_graph_ms']:.1f} ms | {row['cuda_graph_fp32_ms']:.1f} ms |"
                         + (f" {row['cuda_graph_compiled_ms']:.1f} ms |" if "cuda_graph_compiled_ms" in row
                            else " not measured |" if compiled else ""))
    goals = target_lines(res)
    if goals:
        lines += ["", "Goals at the seed config:", *goals]
    return "\n".join(lines)


TARGETS = {"samples_per_s": 8000.0, "vs_eager_dataloader": 4.0, "peak_gpu_mem_gib": 4.0, "predict_ms": 5.0}
"""The GPU speed goals at the seed config: training samples/s at batch 64, the default trainer over the plain
eager DataLoader step in the same run, peak GPU memory of the default step (GiB), predict() ms per chunk at
batch 1."""


def target_lines(res: dict[str, Any]) -> list[str]:
    """One line per goal of ``TARGETS`` that the results can answer: measured value and whether it is met."""
    tr, lines = res["training"], []

    def line(goal: str, value: str, met: bool) -> None:
        lines.append(f"- {goal}: {value}, {'met' if met else 'not met'}")

    fast = tr.get("fast", {})
    if "samples_per_s" in fast:
        line(f">= {TARGETS['samples_per_s']:,.0f} samples/s", f"{fast['samples_per_s']:,.0f}",
             fast["samples_per_s"] >= TARGETS["samples_per_s"])
        base = tr.get("eager_dataloader", {}).get("samples_per_s")
        if base:
            ratio = fast["samples_per_s"] / base
            line(f">= {TARGETS['vs_eager_dataloader']:.0f}x the plain eager DataLoader step", f"{ratio:.2f}x",
                 ratio >= TARGETS["vs_eager_dataloader"])
        mem, dataset = fast["peak_gpu_mem_gib"], res.get("dataset_gib")
        step = f" ({mem - dataset:.1f} GiB without the GPU-resident dataset)" if dataset is not None else ""
        line(f"peak GPU memory <= {TARGETS['peak_gpu_mem_gib']:.0f} GiB", f"{mem:.1f} GiB{step}",
             mem <= TARGETS["peak_gpu_mem_gib"])
    batch1 = [row for row in res.get("predict", []) if row["batch"] == 1 and row["steps"] <= 10]
    if batch1:
        best = min(batch1, key=lambda row: row["cuda_graph_ms"])
        line(f"predict() <= {TARGETS['predict_ms']:.0f} ms per chunk at batch 1",
             f"{best['cuda_graph_ms']:.2f} ms ({best['sampler'].upper()}-{best['steps']})",
             best["cuda_graph_ms"] <= TARGETS["predict_ms"])
    return lines


def readme_source(text: str) -> str:
    """The results JSON that README.md's performance block was rendered from (named in its first line)."""
    block = text.split(README_START, 1)[1].split(README_END, 1)[0]
    match = re.search(r"`(benchmarks/results/[\w.-]+\.json)`", block)
    if match is None:
        raise ValueError("README.md's performance block names no benchmarks/results/*.json file")
    return match.group(1)


def update_readme(res: dict[str, Any], source: str) -> None:
    """Replace README.md's performance block by the rendering of ``res`` (read from ``source``)."""
    readme = ROOT / "README.md"
    text = readme.read_text()
    if README_START not in text or README_END not in text:
        raise SystemExit(f"{readme}: no {README_START} ... {README_END} block to update")
    head, rest = text.split(README_START, 1)
    _, tail = rest.split(README_END, 1)
    readme.write_text(f"{head}{README_START}\n{render_table(res, source)}\n{README_END}{tail}")
    print(f"updated {readme}")


def main(args: Args) -> None:
    if args.readme_from is not None:
        source = args.readme_from.resolve()
        shown = source.relative_to(ROOT).as_posix() if source.is_relative_to(ROOT) else str(args.readme_from)
        update_readme(json.loads(source.read_text()), shown)
        return
    if not torch.cuda.is_available():
        raise SystemExit("scripts/benchmark.py measures GPU speed: no CUDA device is visible")
    from rf_dp_agents.data.synthetic import write_seed_size_dataset
    from rf_dp_agents.data import SequenceDataset

    device = torch.device("cuda")
    torch.backends.cuda.matmul.allow_tf32 = False
    res: dict[str, Any] = {
        "date": dt.date.today().isoformat(), "gpu": torch.cuda.get_device_name(), "torch": torch.__version__,
        "batch_size": args.batch_size, "n_windows": args.n_windows, "args": {k: str(v) for k, v in dataclasses.asdict(args).items()},
        "training": {},
    }
    if not args.data.exists():
        t0 = time.perf_counter()
        write_seed_size_dataset(args.data, args.n_windows, args.n_episodes)
        res["dataset_write_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    cpu_ds = SequenceDataset(args.data, val_ratio=0.0)
    res["dataset_load_s"] = time.perf_counter() - t0
    assert cpu_ds.n_train == args.n_windows, (cpu_ds.n_train, args.n_windows)
    if args.only not in (None, "trainer"):
        gpu_ds = SequenceDataset(args.data, val_ratio=0.0).to(device)
    if args.only == "levers":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.benchmark = True
        res["levers"] = lever_variants(args, gpu_ds, device)
        print(profile_step(args, gpu_ds, device), flush=True)
        return
    if args.only == "predict":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.benchmark = True
        res["predict"] = predict_latency(args, gpu_ds, device)
        from torch.profiler import ProfilerActivity, profile

        policy = build_policy(device, gpu_ds, sampler="ddim", num_inference_steps=10).eval()
        obs = gpu_ds.get_batch(torch.arange(1, device=device))
        with torch.no_grad():
            timed(lambda: policy.predict_action(obs), 3)
            with profile(activities=[ProfilerActivity.CUDA]) as prof:
                timed(lambda: policy.predict_action(obs), 3)
        print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=25), flush=True)
        return
    if args.only == "profile":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.benchmark = True
        print(profile_step(args, gpu_ds, device, rows=40, fast=True), flush=True)
        return
    gpu = torch.cuda.get_device_name().split()[-1].lower()
    out = args.out or ROOT / "benchmarks" / "results" / f"{res['date']}-{gpu}.json"
    out.parent.mkdir(parents=True, exist_ok=True)

    def save() -> None:
        tmp = out.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(res, indent=2))
        os.replace(tmp, out)

    tr = res["training"]
    res["dataset_gib"] = sum(t.numel() * t.element_size() for t in cpu_ds.tensors) / 2**30
    unknown = sorted(set(args.trainer_rows) - set(TRAINER_ROWS))
    if unknown:
        raise SystemExit(f"--trainer-rows: unknown rows {unknown}; choose from {list(TRAINER_ROWS)}")
    for name in args.trainer_rows:
        print(f"trainer end to end, {name} {TRAINER_ROWS[name]} ...", flush=True)
        try:
            tr[name] = trainer_run(args, name, args.data.parent / "runs")
        except Exception as exc:  # a failing setting is reported, and the other rows still run
            import traceback

            traceback.print_exc()
            tr[name] = {"settings": TRAINER_ROWS[name], "error": f"{type(exc).__name__}: {str(exc)[:500]}"}
        print("  ", {k: v for k, v in tr[name].items() if k != "losses"}, flush=True)
        save()
    if "losses" in tr.get("fast", {}) and "losses" in tr.get("trainer_no_compile", {}):
        res["loss_curves"] = curve_agreement(tr["fast"]["losses"], tr["trainer_no_compile"]["losses"])
        print("  loss curves:", res["loss_curves"]["max_rel_gap"], flush=True)
    for row in tr.values():
        row.pop("losses", None)
    save()
    if args.only == "trainer":
        res["ratios"] = speed_ratios(tr)
        save()
        print(render_table(res, str(out)))
        print(f"wrote {out}")
        return
    gpu_ds = SequenceDataset(args.data, val_ratio=0.0).to(device)
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.benchmark = False
    print("eager fp32 + DataLoader ...", flush=True)
    tr["eager_dataloader"] = eager_dataloader(args, cpu_ds, device)
    print("  ", tr["eager_dataloader"], flush=True)
    save()
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.benchmark = True
    print("predict latency ...", flush=True)
    res["predict"] = predict_latency(args, gpu_ds, device)
    save()
    if args.lerobot:
        print("lerobot ...", flush=True)
        try:
            torch.backends.cuda.matmul.allow_tf32 = False
            tr["lerobot"] = lerobot_step(args, device, gpu_ds.shapes["img"][1:])
        except Exception as exc:  # a missing or incompatible lerobot is reported, not fatal
            tr["lerobot"] = {"error": f"{type(exc).__name__}: {exc}"}
        print("  ", tr["lerobot"], flush=True)
    res["ratios"] = speed_ratios(tr)
    save()
    print(render_table(res, str(out)))
    print(f"wrote {out}")
if __name__ == "__main__":
    main(tyro.cli(Args))
