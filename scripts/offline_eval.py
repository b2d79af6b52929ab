#!/usr/bin/env python
"""Action error of a trained agent on its held-out episodes, per sampler (no simulator needed).

  python scripts/offline_eval.py checkpoints/LiftBarrier-rf_Agent0 --samplers ddpm:100 ddpm:10 ddim:10 dpmsolver:10
  python scripts/offline_eval.py checkpoints/LiftBarrier-rf_Agent0 --split train   # the sampler's own error
  python scripts/offline_eval.py checkpoints/LiftBarrier-rf_Agent0 --samplers ddpm:10 ddpm:10:bf16   # CUDA only
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import tyro

from rf_dp_agents.offline_eval import SamplerSpec, action_errors


@dataclass
class Args:
    """Compare samplers on the validation (or training) windows of the run's own dataset split."""

    checkpoint: tyro.conf.Positional[Path]
    """Training run directory (best/ is used, else last/) or a checkpoint directory inside one."""
    samplers: list[str] = field(default_factory=lambda: ["ddpm:100", "ddpm:10", "ddim:10"])
    """Samplers to compare, as name:steps, or name:steps:bf16 for the U-Net run from bfloat16 weights in CUDA
    graphs; a :fused or :compiled suffix runs the U-Net in CUDA graphs through the fused Triton kernels (the default
    on CUDA) or compiled by torch.compile (name:steps:bf16:compiled combines them; a CUDA device only)."""
    split: Literal["val", "train"] = "val"
    """Windows to evaluate: the held-out episodes (val) or the training episodes (train, where the model fits
    closely, so the differences between samplers are the samplers' own)."""
    zarr_path: Path | None = None
    """Dataset (default: the one recorded in the run's run.json)."""
    max_windows: int | None = None
    """Evaluate at most this many windows."""
    batch_size: int = 64
    """Windows per model call."""
    device: str = "auto"
    """Torch device: auto (cuda if available), cpu, cuda."""
    output: Path | None = None
    """Also write the results JSON here."""


def main(args: Args) -> int:
    try:
        specs = [SamplerSpec.parse(s) for s in args.samplers]
        res = action_errors(args.checkpoint, specs, args.zarr_path, args.batch_size, args.max_windows, args.device,
                            split=args.split)
    except (ValueError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"{res['windows']} {'validation' if args.split == 'val' else 'training'} windows of {res['dataset']}")
    for name, err in res["errors"].items():
        print(f"  {name:>14}: MSE {err['mse']:.5f}  MAE {err['mae']:.4f}")
    if args.output is not None:
        args.output.write_text(json.dumps(res, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main(tyro.cli(Args)))
