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
results JSON into the README's performance table instead of measuring. The measurement code is the package
:mod:`rf_dp_agents.bench` (rows, peers, report rendering); this file is its command line.

  python scripts/benchmark.py                         # on a CUDA machine
  python scripts/benchmark.py --readme-from benchmarks/results/2026-11-29-h200.json
"""

from __future__ import annotations

from pathlib import Path

import tyro

from rf_dp_agents.bench.settings import BenchmarkArgs
from rf_dp_agents.bench.suite import main

ROOT = Path(__file__).resolve().parent.parent

if __name__ == "__main__":
    main(tyro.cli(BenchmarkArgs), ROOT)
