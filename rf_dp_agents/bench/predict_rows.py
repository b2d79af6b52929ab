"""predict() rows of the GPU benchmark: milliseconds per action chunk under each setting of
:data:`PREDICT_SETTINGS`, at batch 1 and 32, for DDPM-100, DDPM-10 and DDIM-10.
"""

from __future__ import annotations

from typing import Any

import torch

from rf_dp_agents.bench.settings import BenchmarkArgs
from rf_dp_agents.bench.timing import build_policy, timed
from rf_dp_agents.data import SequenceDataset


PREDICT_SETTINGS: dict[str, dict[str, bool]] = {
    "eager_ms": {"cuda_graphs": False},
    "cuda_graph_ms": {},
    "cuda_graph_no_compile_ms": {"compile_graphs": False},
    "cuda_graph_fused_ms": {"fused_graphs": True},
    "cuda_graph_fp32_ms": {"tf32": False},
    "previous_default_ms": {"compile_graphs": False, "channels_last_graphs": False, "film_tables": False,
                            "matmul": False},
}
"""predict() columns: the policy's default on CUDA (CUDA graph of the compiled U-Net, matmul convolutions, FiLM
tables, channels_last encoder, TF32) with one setting changed (``cuda_graph_fused_ms``: the U-Net through the fused
Triton kernels instead of torch.compile), and ``previous_default_ms``: a plain CUDA graph
of the cuDNN convolutions with per-step FiLM and an NCHW encoder (the default before these levers)."""


def predict_latency(args: BenchmarkArgs, dataset: SequenceDataset, device: torch.device) -> list[dict[str, Any]]:
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
    return rows


__all__ = ["PREDICT_SETTINGS", "predict_latency"]
