"""predict() rows of the GPU benchmark: milliseconds per action chunk under each setting of
:data:`PREDICT_SETTINGS`, at batch 1 and 32, for DDPM-100, DDPM-10 and DDIM-10; and the same samplers through the
user's path (:func:`user_path`: fresh processes, ``load_policy``, PyTorch's default flags, numpy in and out).
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any, Callable

import torch

from rf_dp_agents.bench.settings import BenchmarkArgs
from rf_dp_agents.bench.timing import build_policy, timed
from rf_dp_agents.data import SequenceDataset


PREDICT_SETTINGS: dict[str, dict[str, bool]] = {
    "eager_ms": {"cuda_graphs": False},
    "cuda_graph_ms": {"fused_graphs": False},
    "cuda_graph_no_compile_ms": {"fused_graphs": False, "compile_graphs": False},
    "cuda_graph_fused_ms": {"fused_graphs": True},
    "cuda_graph_fp32_ms": {"fused_graphs": False, "tf32": False},
    "previous_default_ms": {"fused_graphs": False, "compile_graphs": False, "channels_last_graphs": False,
                            "film_tables": False, "matmul": False},
}
"""predict() columns: the CUDA graph of the torch.compile'd U-Net (matmul convolutions, FiLM tables, channels_last
encoder, TF32; the policy's default before the fused kernels) with one setting changed (``cuda_graph_fused_ms``:
the U-Net through the fused Triton kernels instead of torch.compile, the policy's default now:
:data:`PREDICT_DEFAULT`), and ``previous_default_ms``: a plain CUDA graph of the cuDNN convolutions with per-step
FiLM and an NCHW encoder (the default before these levers)."""
PREDICT_DEFAULT = "cuda_graph_fused_ms"
"""The column that times the policy's default predict path on CUDA (recorded in the results as
``predict_default``)."""


def predict_latency(
    args: BenchmarkArgs, dataset: SequenceDataset, device: torch.device,
    on_row: Callable[[list[dict[str, Any]]], None] | None = None,
) -> list[dict[str, Any]]:
    """Milliseconds per action chunk through ``predict_action`` (encoder + full denoising loop) for every
    column of ``PREDICT_SETTINGS``; each setting on a fresh policy with the same weights. ``on_row`` gets the rows
    so far after each (sampler, batch) row, so a caller can save them as they come."""
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
                policy.graph_tf32 = tf32  # the sampling graphs otherwise allow TF32 inside whatever the global flags say
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
                    if setting.get("fused_graphs"):
                        row["fused"] = policy.uses_fused_unet()  # False when the kernels failed
                    else:
                        row.setdefault("compiled", policy.compile_graphs)  # False when compilation failed
            rows.append(row)
            print(f"  predict {row}", flush=True)
            if on_row is not None:
                on_row(rows)
    return rows


def predict_results(
    args: BenchmarkArgs, dataset: SequenceDataset, device: torch.device, res: dict[str, Any],
    save: Callable[[], None],
) -> None:
    """The results' predict() part, into ``res``: the column of the policy's default, and the rows of
    :func:`predict_latency`, calling ``save`` after each row (a run cut short keeps the rows it measured)."""
    res["predict_default"] = PREDICT_DEFAULT

    def keep(rows: list[dict[str, Any]]) -> None:
        res["predict"] = list(rows)
        save()

    predict_latency(args, dataset, device, on_row=keep)  # every row is kept (and saved) as it comes


def user_path(args: BenchmarkArgs, root: Path, device: str = "cuda") -> dict[str, Any]:
    """predict() as users call it (:mod:`~rf_dp_agents.bench.predict_user`): two fresh processes per sampler of
    ``USER_SAMPLERS`` on a randomly initialised seed-config checkpoint, from empty compile caches, with a bytecode
    cache as a pip install has; ``{"error": ...}`` when a process fails (the benchmark's other parts still count)."""
    from rf_dp_agents.bench.predict_user import (USER_SAMPLERS, ChildFailed, child_env, run_user_path,
                                                 synthetic_checkpoint)

    work = Path(tempfile.mkdtemp(prefix="predict-user-"))
    doc: dict[str, Any] = {"samplers": list(USER_SAMPLERS), "fresh_cache": True, "bytecode_cache": True,
                           "repeats": args.user_repeats}
    try:
        checkpoint = synthetic_checkpoint("seed", work)
        env = child_env(root, work, fresh_cache=True, bytecode_cache=work / "pycache")
        doc["rows"] = run_user_path(root / "scripts" / "benchmark_predict_user.py", checkpoint, USER_SAMPLERS,
                                    ["--repeats", str(args.user_repeats), "--device", device], env,
                                    report=lambda line: print(f"  {line}", flush=True))
    except ChildFailed as exc:
        doc["error"] = str(exc)[-2000:]
        print(f"  user path failed: {exc}", flush=True)
    return doc


__all__ = ["PREDICT_DEFAULT", "PREDICT_SETTINGS", "predict_latency", "predict_results", "user_path"]
