"""Trainer rows of the GPU benchmark: the real trainer end to end under each setting of :data:`TRAINER_ROWS`,
the step time of each speed lever alone and combined, and a kernel profile of one training step.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import torch

from rf_dp_agents.bench.settings import BenchmarkArgs
from rf_dp_agents.bench.timing import build_policy, timed
from rf_dp_agents.data import SequenceDataset


TRAINER_ROWS: dict[str, dict[str, str]] = {
    "fast": {},
    "fast_pinned_host": {"dataset_device": "pinned"},
    "fast_no_cuda_graphs": {"cuda_graphs": "off", "compile": "off", "precision": "bf16", "channels_last": "on"},
    "trainer_no_compile": {"cuda_graphs": "off", "compile": "off"},
    "compiled_fp32": {"cuda_graphs": "off"},
}
"""Trainer settings of each end-to-end row: the default on CUDA (one captured CUDA graph per step, bf16
autocast, channels_last encoder with the Triton GroupNorm), the same with the dataset in page-locked host memory
(each batch gathered on the CPU during the previous step), the same without the graph, the plain eager fp32
trainer, and ``compiled_fp32``, the default before CUDA graphs (torch.compile, TF32, NCHW)."""


def trainer_run(args: BenchmarkArgs, name: str, out_dir: Path) -> dict[str, Any]:
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


def lever_variants(args: BenchmarkArgs, dataset: SequenceDataset, device: torch.device) -> list[dict[str, Any]]:
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


def profile_step(args: BenchmarkArgs, dataset: SequenceDataset, device: torch.device, rows: int = 25,
                 fast: bool = False) -> str:
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


__all__ = ["TRAINER_ROWS", "lever_variants", "profile_step", "trainer_run"]
