"""GPU benchmark of the parts of a seed-config training step and of one predict() call.

Each row times forward + backward + fused AdamW of one part on random GPU-resident inputs (128 images of
240x320 for the encoder: batch 64 x 2 frames; batch 64 for the U-Net), after warm-up, and prints ms per step
and peak GPU memory. The encoder rows swap the normalisation layer (GroupNorm as in the model, the Triton
GroupNorm, BatchNorm, none at all: the floor set by the convolutions alone), the precision (TF32 or bf16
autocast), the layout (NCHW or channels_last) and torch.compile. The U-Net rows compare eager launches with
a CUDA-graph replay of the same forward and backward, with the U-Net's convolutions run by cuDNN or as
matrix multiplies (``MatmulConv1d``, ``MatmulConvTranspose1d``). The predict rows time ``predict_action`` at
batch 1 (DDIM-10, CUDA graph, the latency the policy pays per action chunk) with those convolutions, the
FiLM conditioning per step or tabled before the loop, the encoder held NCHW or channels_last, fp32/TF32 or
bf16 autocast, the U-Net compiled before capture or not, and the U-Net run from a bfloat16 copy of its weights
(``bf16_graphs``) or not; ``--profile`` adds the CUDA kernel table of three graph replays of every predict row
named.

  python scripts/benchmark_split.py                       # every row
  python scripts/benchmark_split.py fastgn_bf16_cl unet_tf32   # the named rows only
  python scripts/benchmark_split.py --profile pred_matmul_cl   # one predict row and its kernel profile

The rows are defined in :mod:`rf_dp_agents.bench.parts`; this file is their command line.
"""

from __future__ import annotations

import sys

from rf_dp_agents.bench.parts import main

if __name__ == "__main__":
    main(sys.argv[1:])
