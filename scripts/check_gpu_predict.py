"""Checks of predict()'s CUDA-graph paths on a GPU (the CPU test suite cannot run them): a few minutes with the seed
config (``--no-seed-config``: about a minute).

For DDIM (deterministic given the initial noise, which per-row generators fix) the actions of
  1. the plain CUDA graph (cuDNN warm-up, matrix-multiply convolutions in the capture, FiLM tables),
  2. the CUDA graph of the torch.compile'd U-Net,
  3. the CUDA graph of the U-Net through the fused Triton kernels (``fused_graphs``, the default), also after the
     policy's weights are changed in place,
must equal eager sampling's within ``--atol`` (TF32 off, so the paths differ only in summation order), at each
batch size. The graph of the U-Net run from bfloat16 weights (``bf16_graphs``) must stay within ``--bf16-atol``
of eager float32 sampling, also after the policy's weights are changed in place (the bf16 copy is refreshed at
every replay, as an EMA model's validation needs). For DDPM, two graph calls with the same generators must give
the same actions, and a call with other generators different ones. Prints one line per check and exits 1 when
one fails. The checks: :mod:`rf_dp_agents.bench.gpu_predict_checks`.

  python scripts/check_gpu_predict.py
"""

from __future__ import annotations

import sys

import tyro

from rf_dp_agents.bench.gpu_predict_checks import PredictCheckArgs, main

if __name__ == "__main__":
    sys.exit(main(tyro.cli(PredictCheckArgs)))
