"""Checks of the trainer's CUDA-graph path on a GPU (the CPU test suite cannot run it): a few minutes on an H200.

Each check trains the tiny preset on a small synthetic zarr through ``scripts/train.py`` in its own process:
  1. learns the same: the default GPU step (one CUDA graph, bf16, channels_last) against the eager fp32 step
     (``--cuda-graphs off --compile off``); the mean losses of the last epoch agree within ``--loss-rtol``;
  2. validation: every epoch of the graphed run writes a finite ``val/loss`` and ``val/action_mse`` (the EMA
     model, held channels_last, sampled through its own CUDA graphs);
  3. resume: a graphed run killed with SIGKILL after its first snapshot and resumed with ``--resume`` ends
     with the per-step losses and EMA weights of an uninterrupted graphed run: within ``--resume-rtol``, or
     within twice the gap between two uninterrupted runs (bf16 steps with atomic-add reductions in the
     backward pass are not bitwise repeatable on a GPU). The EMA gap is taken over all weights as one vector;
     the tensor that differs most is named;
  4. bf16 sampling: on the graphed run's held-out windows, the action error of DDPM-10 and DDIM-10 with the
     U-Net run from bfloat16 weights (``bf16_graphs``) is within ``--bf16-rtol`` of float32 sampling's;
  5. page-locked host data: ``--dataset-device pinned`` (batches gathered on the CPU, copied ahead of each step)
     runs the same CUDA graph, its per-step losses as close to the GPU-resident run's as two such runs are.
Prints one line per check and exits 1 when one fails. The checks: :mod:`rf_dp_agents.bench.gpu_trainer_checks`.

  python scripts/check_gpu_trainer.py
"""

from __future__ import annotations

import sys
from pathlib import Path

import tyro

from rf_dp_agents.bench.gpu_trainer_checks import TrainerCheckArgs, main

ROOT = Path(__file__).resolve().parent.parent

if __name__ == "__main__":
    sys.exit(main(tyro.cli(TrainerCheckArgs), ROOT))
