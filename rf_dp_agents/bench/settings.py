"""Settings of the GPU benchmark (``scripts/benchmark.py``): one tyro dataclass, a docstring per field as its
``--help`` text."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass
class BenchmarkArgs:
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
    trainer_rows: tuple[str, ...] = ("fast", "fast_pinned_host", "fast_no_cuda_graphs", "trainer_no_compile",
                                     "compiled_fp32")
    """End-to-end trainer rows to run (names of TRAINER_ROWS)."""
    predict_repeats: int = 20
    """Timed predict() calls per setting."""
    user_path: bool = True
    """Also time predict() as users call it beside the graph rows: fresh processes through ``load_policy`` with
    PyTorch's default flags, numpy in and out, at batch 1 (``scripts/benchmark_predict_user.py`` on a randomly
    initialised seed-config checkpoint, empty compile caches, a bytecode cache as a pip install has)."""
    user_repeats: int = 100
    """Chunks timed per user-path process."""
    lerobot: bool = True
    """Include lerobot's DiffusionPolicy when it imports."""
    lerobot_tf32: bool = False
    """Run the lerobot row with TF32 matrix multiplies switched on (PyTorch's default, and lerobot's, is off)."""
    image_hw: tuple[int, int] = (240, 320)
    """Image size of the lerobot row run alone (``--only lerobot``); otherwise the dataset's."""
    levers: bool = True
    """Measure each speed lever (channels_last, bf16, CUDA graph, torch.compile) and profile the eager step."""
    only: str | None = None
    """Run one part only: 'trainer' (the end-to-end trainer rows, written to --out), 'lerobot' (lerobot's step
    alone, no dataset, written to --out), 'levers', 'predict' (the user path, then the predict() rows, written to
    --out, then a kernel profile of DDIM-10) or 'profile'."""
    out: Path | None = None
    """Results JSON (default benchmarks/results/<date>-<gpu>.json)."""
    readme_from: Path | None = None
    """Render this results JSON into README.md's performance table and exit."""


__all__ = ["BenchmarkArgs"]
