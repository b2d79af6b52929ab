"""The shared inference server with and without ``overlap``, without a simulator (``scripts/benchmark_inference.py``).

One trial is one fresh process: ``agents`` randomly initialised policies (the seed config or the tiny one) on the
device, their sampling graphs built for the server's batch sizes, one :class:`InferenceServer` and ``workers``
client threads standing in for env workers. Each client asks every agent for a chunk at once, waits for all of
them, sleeps ``env_ms`` (the env's steps between chunks; 0: pure inference) and repeats ``rounds`` times. The trial
reports chunks served per second and the server's statistics; the parent runs the two modes alternately, each
trial in its own process, so each mode starts as a user's rollout does.
"""

from __future__ import annotations

import json
import multiprocessing
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from rf_dp_agents.config import ModelConfig, tiny_model_config
from rf_dp_agents.model import DiffusionPolicy
from rf_dp_agents.rollout.calls import ServerStats, batch_sizes
from rf_dp_agents.rollout.client import InferenceClient, claim_slot
from rf_dp_agents.rollout.inference import InferenceServer


@dataclass
class OverlapArgs:
    """Settings of the overlap benchmark."""

    agents: int = 3
    """Policies, one per arm (ThreeRobotsStackCube-rf: 3, LongPipelineDelivery-rf: 4)."""
    workers: int = 8
    """Client threads standing in for env worker processes."""
    rounds: int = 40
    """Chunks each client asks of each agent (after one untimed round)."""
    env_ms: float = 0.0
    """Milliseconds each client sleeps between its rounds (the env's steps); 0 is inference alone."""
    config: Literal["seed", "tiny"] = "seed"
    """Model size: the seed's (240x320 images, U-Net 256/512/1024) or the tiny test one."""
    sampler: Literal["ddpm", "ddim"] = "ddpm"
    """Sampler of every policy."""
    steps: int = 10
    """Denoising steps."""
    fused_graphs: bool = False
    """Run the U-Net in the sampling graphs through the fused Triton kernels (the policy's default; off here by
    default, so the figures compare with the earlier runs of plain graphs)."""
    compile_graphs: bool = False
    """Without the fused kernels, capture the torch.compile'd U-Net in the sampling graphs (10-20 s per batch size
    and model to build)."""
    device: str = "cuda"
    """Torch device of the models."""
    repeats: int = 2
    """Trials per mode, alternating off / on."""
    output: Path | None = None
    """Results JSON (every trial and the medians)."""
    trial: Literal["off", "on"] | None = None
    """Internal: run one trial in this process with overlap off or on and print its JSON."""


def model_config(args: OverlapArgs) -> ModelConfig:
    """The policies' config for ``args``."""
    if args.config == "tiny":
        return tiny_model_config(sampler=args.sampler, num_inference_steps=args.steps)
    return ModelConfig(sampler=args.sampler, num_inference_steps=args.steps)


def run_trial(args: OverlapArgs, overlap: bool) -> dict[str, Any]:
    """One trial in this process: chunks per second and the server's statistics."""
    cfg = model_config(args)
    models = []
    for agent in range(args.agents):
        torch.manual_seed(agent)
        model = DiffusionPolicy(cfg).to(args.device).eval()
        model.fused_graphs, model.compile_graphs = args.fused_graphs, args.compile_graphs
        models.append(model)
    server = InferenceServer(models, args.workers, multiprocessing.get_context("spawn"), overlap=overlap)
    for model in models:  # after the server set each model's graph options
        model.build_graphs(batch_sizes(args.workers))
    rows = {key: np.zeros((1, cfg.obs_horizon, *cfg.image_shape), np.uint8) for key in cfg.camera_keys}
    rows[cfg.state_key] = np.zeros((1, cfg.obs_horizon, cfg.state_dim), np.float32)
    start_line = threading.Barrier(args.workers + 1)
    errors: list[BaseException] = []

    def client() -> None:
        try:
            line = InferenceClient(claim_slot(server.slots), server.requests)
            for k in range(args.rounds + 1):
                if k == 1:  # every client done with the untimed round; the server's counters restart
                    start_line.wait()
                    start_line.wait()
                rids = [line.submit(agent, rows, [k * 1000 + agent]) for agent in range(args.agents)]
                for rid in rids:
                    line.result(rid)
                if args.env_ms:
                    time.sleep(args.env_ms / 1000)
        except BaseException as err:  # reported by the trial
            errors.append(err)
            start_line.abort()

    with server:
        threads = [threading.Thread(target=client) for _ in range(args.workers)]
        for thread in threads:
            thread.start()
        start_line.wait()
        server.stats = ServerStats()
        start_line.wait()
        t0 = time.perf_counter()
        for thread in threads:
            thread.join()
        wall = time.perf_counter() - t0
    if errors:
        raise RuntimeError(f"a client failed: {errors[0]!r}")
    chunks = args.workers * args.agents * args.rounds
    return {"overlap": overlap, "chunks": chunks, "wall_seconds": wall, "chunks_per_second": chunks / wall,
            "server": server.stats.to_dict()}


def run_parent(args: OverlapArgs, script: Path) -> dict[str, Any]:
    """Run the trials, each in a fresh process, alternating the modes; print one line per trial."""
    trials: list[dict[str, Any]] = []
    base = [sys.executable, str(script), "--agents", str(args.agents), "--workers", str(args.workers),
            "--rounds", str(args.rounds), "--env-ms", str(args.env_ms), "--config", args.config,
            "--sampler", args.sampler, "--steps", str(args.steps), "--device", args.device,
            "--fused-graphs" if args.fused_graphs else "--no-fused-graphs",
            "--compile-graphs" if args.compile_graphs else "--no-compile-graphs"]
    for k in range(args.repeats):
        for mode in ("off", "on"):
            done = subprocess.run(base + ["--trial", mode], capture_output=True, text=True)
            if done.returncode != 0:
                raise RuntimeError(f"the {mode} trial failed:\n{done.stderr[-3000:]}")
            trial = json.loads(done.stdout.strip().splitlines()[-1])
            trials.append(trial)
            s = trial["server"]
            print(f"overlap {mode:>3}: {trial['chunks_per_second']:8.1f} chunks/s, "
                  f"{s['mean_rows_per_batch']:.1f} rows per call, a call running "
                  f"{100 * s['busy_seconds'] / trial['wall_seconds']:.0f}% of the time, at most "
                  f"{s['max_concurrent_calls']} at once", flush=True)
    medians = {mode: statistics.median(t["chunks_per_second"] for t in trials if t["overlap"] == (mode == "on"))
               for mode in ("off", "on")}
    doc = {"settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(args).items()},
           "device": torch.cuda.get_device_name() if args.device.startswith("cuda") else args.device,
           "torch": torch.__version__, "trials": trials, "median_chunks_per_second": medians,
           "speedup": medians["on"] / medians["off"]}
    print(f"median: off {medians['off']:.1f}, on {medians['on']:.1f} chunks/s ({doc['speedup']:.2f}x)")
    if args.output is not None:
        from rf_dp_agents.rollout.metrics import write_json_atomic

        write_json_atomic(args.output, doc)
    return doc


__all__ = ["OverlapArgs", "model_config", "run_parent", "run_trial"]
