"""The parts of a seed-config training step and of one predict() call, timed one by one on a GPU
(``scripts/benchmark_split.py``): encoder rows (:data:`ENCODER_ROWS`), U-Net rows (:data:`UNET_ROWS`) and
predict rows (:data:`PREDICT_ROWS`, each a change from :data:`PREDICT_DEFAULT`); each row prints one line.
"""

from __future__ import annotations

import time

import torch
import torchvision
from torch import nn

from rf_dp_agents.bench.timing import amp, bench
from rf_dp_agents.config import ModelConfig
from rf_dp_agents.model.diffusion import DiffusionPolicy
from rf_dp_agents.model.groupnorm import FastGroupNorm
from rf_dp_agents.model.unet import ConditionalUnet1D, set_matmul_convolutions
from rf_dp_agents.model.vision import replace_batchnorm_with_groupnorm


BATCH = 64
ENCODER_ROWS = {  # name: (norm, channels_last, bf16, compiled)
    "gn_tf32_nchw": ("gn", False, False, False),
    "gn_bf16_nchw": ("gn", False, True, False),
    "gn_bf16_cl": ("gn", True, True, False),
    "fastgn_bf16_cl": ("fastgn", True, True, False),
    "bn_tf32_nchw": ("bn", False, False, False),
    "bn_bf16_cl": ("bn", True, True, False),
    "none_tf32_nchw": ("none", False, False, False),
    "none_bf16_cl": ("none", True, True, False),
    "gn_tf32_nchw_compiled": ("gn", False, False, True),
    "gn_bf16_cl_compiled": ("gn", True, True, True),
}
UNET_ROWS = {  # name: (bf16, compiled, matmul Conv1d)
    "unet_tf32": (False, False, False),
    "unet_bf16": (True, False, False),
    "unet_tf32_compiled": (False, True, False),
    "unet_tf32_matmul": (False, False, True),
    "unet_bf16_matmul": (True, False, True),
}
PREDICT_DEFAULT: dict[str, bool | str] = {
    "matmul": True, "autocast": False, "channels_last_graphs": True, "compile_graphs": True, "film_tables": True,
    "bf16_graphs": False,
}
"""The policy's default predict path on CUDA; ``matmul``: matrix-multiply U-Net convolutions, ``autocast``: bf16
autocast around the call, the rest are :class:`DiffusionPolicy` attributes."""
PREDICT_ROWS: dict[str, dict[str, bool | str]] = {  # name: settings changed from PREDICT_DEFAULT
    "pred_cudnn_nofilm": {"matmul": False, "channels_last_graphs": False, "compile_graphs": False,
                          "film_tables": False},
    "pred_cudnn": {"matmul": False, "channels_last_graphs": False, "compile_graphs": False},
    "pred_matmul_nofilm": {"channels_last_graphs": False, "compile_graphs": False, "film_tables": False},
    "pred_matmul": {"channels_last_graphs": False, "compile_graphs": False},
    "pred_matmul_cl": {"compile_graphs": False},
    "pred_matmul_cl_bf16": {"compile_graphs": False, "autocast": True},
    "pred_matmul_compiled_nofilm": {"channels_last_graphs": False, "film_tables": False},
    "pred_matmul_compiled": {"channels_last_graphs": False},
    "pred_matmul_cl_compiled": {},
    "pred_matmul_cl_bf16_compiled": {"autocast": True},
    "pred_bf16_weights": {"compile_graphs": False, "bf16_graphs": True},
    "pred_bf16_weights_compiled": {"bf16_graphs": True},
}


def encoder(norm: str, device: torch.device) -> nn.Module:
    """ResNet18 trunk (fc removed) with its BatchNorms kept, replaced by a GroupNorm kind, or removed."""
    net = torchvision.models.resnet18(weights=None)
    net.fc = nn.Identity()
    if norm != "bn":
        factory = {"gn": nn.GroupNorm, "fastgn": FastGroupNorm, "none": lambda groups, channels: nn.Identity()}[norm]
        replace_batchnorm_with_groupnorm(net, norm=factory)
    return net.to(device)


def encoder_row(name: str, device: torch.device) -> str:
    """One line: ms per forward + backward + AdamW step of the encoder row ``name`` on 128 random images."""
    norm, channels_last, bf16, compiled = ENCODER_ROWS[name]
    net = encoder(norm, device)
    if channels_last:
        net = net.to(memory_format=torch.channels_last)
    opt = torch.optim.AdamW(net.parameters(), lr=1e-4, fused=True)
    forward = torch.compile(net) if compiled else net
    images = torch.randint(0, 256, (2 * BATCH, 3, 240, 320), dtype=torch.uint8, device=device)

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        x = images.float().mul(2 / 255).sub(1)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with amp(bf16):
            out = forward(x)
        out.float().square().mean().backward()
        opt.step()

    t0 = time.perf_counter()
    ms, mem = bench(step)
    return f"ENC  {name:24s} {ms:8.2f} ms  {mem:6.2f} GiB  (warm-up included: {time.perf_counter() - t0:.0f} s)"


def unet_row(name: str, device: torch.device) -> list[str]:
    """ms per U-Net step of row ``name``, and (uncompiled rows) of its forward + backward as a CUDA graph."""
    bf16, compiled, matmul = UNET_ROWS[name]
    torch.manual_seed(0)
    cond_dim = 2 * (512 + 8)
    net = ConditionalUnet1D(8, cond_dim).to(device)
    set_matmul_convolutions(net, matmul)
    opt = torch.optim.AdamW(net.parameters(), lr=1e-4, fused=True)
    cond = torch.randn(BATCH, cond_dim, device=device)
    sample = torch.randn(BATCH, 16, 8, device=device)
    t = torch.randint(0, 100, (BATCH,), device=device)
    forward = torch.compile(net) if compiled else net

    def fwd_bwd() -> None:
        with amp(bf16):
            out = forward(sample, t, cond)
        out.float().square().mean().backward()

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        fwd_bwd()
        opt.step()

    ms, mem = bench(step)
    lines = [f"UNET {name:24s} {ms:8.2f} ms  {mem:6.2f} GiB"]
    if not compiled:
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(3):
                fwd_bwd()
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            fwd_bwd()
        ms, _ = bench(graph.replay)
        lines.append(f"UNET {name + '_graph':24s} {ms:8.2f} ms  (forward + backward replayed, no optimiser)")
    return lines


def predict_row(name: str, device: torch.device, profile: bool) -> list[str]:
    """ms per ``predict_action`` call at batch 1, DDIM-10 through the policy's CUDA graph, seed config."""
    settings = {**PREDICT_DEFAULT, **PREDICT_ROWS[name]}
    torch.manual_seed(0)
    policy = DiffusionPolicy(ModelConfig(sampler="ddim", num_inference_steps=10)).to(device).eval()
    set_matmul_convolutions(policy, bool(settings.pop("matmul")))
    bf16 = bool(settings.pop("autocast"))
    for attr, value in settings.items():
        setattr(policy, attr, value)
    obs = {"img": torch.randint(0, 256, (1, 2, 3, 240, 320), dtype=torch.uint8, device=device),
           "state": torch.randn(1, 2, 8, device=device)}

    def call() -> None:
        with amp(bf16):
            policy.predict_action(obs)

    t0 = time.perf_counter()
    ms, mem = bench(call, n=50)
    lines = [f"PRED {name:28s} {ms:8.2f} ms  {mem:6.2f} GiB  (capture included: {time.perf_counter() - t0:.0f} s)"]
    if profile:  # the CUDA graph's kernels, replayed three times
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
            for _ in range(3):
                call()
            torch.cuda.synchronize()
        lines.append(prof.key_averages().table(sort_by="self_cuda_time_total", row_limit=25, max_name_column_width=70))
    return lines


def main(names: list[str]) -> None:
    """Print every row named in ``names`` (all rows when none; ``--profile`` adds kernel tables)."""
    if not torch.cuda.is_available():
        raise SystemExit("scripts/benchmark_split.py measures GPU time: no CUDA device is visible")
    profile = "--profile" in names
    names = [n for n in names if n != "--profile"]
    known = [*ENCODER_ROWS, *UNET_ROWS, *PREDICT_ROWS]
    unknown = sorted(set(names) - set(known))
    if unknown:
        raise SystemExit(f"unknown rows {unknown}; choose from {known}")
    device = torch.device("cuda")
    torch.backends.cudnn.benchmark = True
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    for name in ENCODER_ROWS:
        if not names or name in names:
            print(encoder_row(name, device), flush=True)
    for name in UNET_ROWS:
        if not names or name in names:
            print("\n".join(unet_row(name, device)), flush=True)
    for name in PREDICT_ROWS:
        if not names or name in names:
            print("\n".join(predict_row(name, device, profile)), flush=True)


__all__ = ["ENCODER_ROWS", "PREDICT_DEFAULT", "PREDICT_ROWS", "UNET_ROWS", "encoder", "encoder_row", "main",
           "predict_row", "unet_row"]
