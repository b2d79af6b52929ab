"""The benchmark's results, judged and rendered: speed ratios, loss-curve agreement, the goals (:data:`TARGETS`)
and the Markdown performance tables that README.md shows between :data:`README_START` and :data:`README_END`.
Pure functions of a results JSON: they import no GPU code.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np

from rf_dp_agents.bench.predict_user import user_figures


README_START, README_END = "<!-- perf-table:start -->", "<!-- perf-table:end -->"


def speed_ratios(training: dict[str, dict[str, Any]]) -> dict[str, float]:
    """``fast_vs_<row>``: the default trainer's samples/s over each other measured row's."""
    fast = training.get("fast", {}).get("samples_per_s")
    if fast is None:
        return {}
    return {f"fast_vs_{name}": fast / row["samples_per_s"]
            for name, row in training.items() if name != "fast" and "samples_per_s" in row}


def curve_agreement(fast: list[float], eager: list[float], window: int = 50) -> dict[str, Any]:
    """Windowed means of both loss curves and their largest relative gap."""
    n = min(len(fast), len(eager)) // window * window
    f = np.asarray(fast[:n]).reshape(-1, window).mean(1)
    e = np.asarray(eager[:n]).reshape(-1, window).mean(1)
    return {
        "window": window,
        "fast_means": f.tolist(),
        "eager_means": e.tolist(),
        "max_rel_gap": float(np.max(np.abs(f - e) / np.maximum(np.abs(e), 1e-8))),
    }


BASELINES = {"eager_dataloader": "vs eager DataLoader", "trainer_no_compile": "vs eager fp32 trainer"}
"""Rows the ratio column can be taken against, in order of preference (the first one the results hold)."""


def default_column(res: dict[str, Any]) -> str:
    """The predict() column that timed the policy's default graph (results before the fused default name none: the
    compiled U-Net's)."""
    return res.get("predict_default", "cuda_graph_ms")


def render_table(res: dict[str, Any], source: str) -> str:
    """Markdown performance tables of one results JSON (``source``: its path, named in the first line)."""
    tr = res["training"]
    base_key = next((key for key in BASELINES if "samples_per_s" in tr.get(key, {})), None)  # None: no ratio column
    base = tr[base_key]["samples_per_s"] if base_key is not None else None
    lines = [
        f"Measured {res['date']} on one {res['gpu']} (torch {res['torch']}; `{source}`), seed config: ResNet18-GN + "
        f"U-Net 256/512/1024, 240x320 images, To 2, T 16, batch {res['batch_size']}, {res['n_windows']:,} windows per "
        "epoch.",
        "",
        "| training path | samples/s | ms/step | peak GPU memory |" + (f" {BASELINES[base_key]} |" if base else ""),
        "|---|---|---|---|" + ("---|" if base else ""),
    ]
    names = {
        "fast": "rf_dp_agents trainer, default on CUDA (GPU-resident data, whole step in one CUDA graph, bf16 "
                "autocast, channels_last encoder with Triton GroupNorm, fused AdamW)",
        "fast_pinned_host": "the same, --dataset-device pinned (data in page-locked host memory, each batch "
                            "gathered on the CPU during the previous step)",
        "fast_no_cuda_graphs": "the same, --cuda-graphs off --compile off --precision bf16 --channels-last on",
        "compiled_fp32": "rf_dp_agents trainer, --cuda-graphs off (torch.compile, TF32, NCHW: the previous default)",
        "trainer_no_compile": "rf_dp_agents trainer, --cuda-graphs off --compile off (eager, TF32, NCHW)",
        "eager_dataloader": "plain eager fp32 step + torch DataLoader (8 workers)",
        "lerobot": "lerobot 0.6.1 DiffusionPolicy, fp32 eager, synthetic GPU batch",
    }
    for key in names:
        row = tr.get(key)
        if not row or "samples_per_s" not in row:
            continue
        ratio = f" {row['samples_per_s'] / base:.2f}x |" if base else ""
        lines.append(f"| {names[key]} | {row['samples_per_s']:,.0f} | {row['step_ms']:.1f} | "
                     f"{row['peak_gpu_mem_gib']:.1f} GiB |{ratio}")
    dataset = res.get("dataset_gib")
    if dataset is not None:  # results written since peak memory is counted per row
        lines += ["", "Peak GPU memory is each row's own: what it allocated above what the process held before it. "
                      f"The trainer rows include the trainer's GPU-resident copy of the dataset ({dataset:.1f} GiB at "
                      "this size)."]
    else:
        lines += ["", "Peak GPU memory is everything allocated in the benchmark process: it includes the benchmark's "
                      "own GPU copy of the dataset, and the trainer rows also the trainer's copy."]
    gap = res.get("loss_curves", {}).get("max_rel_gap")
    if gap is not None:
        window = res["loss_curves"]["window"]
        lines += ["", f"Loss curves of the default trainer and the eager fp32 trainer over the same steps "
                      f"({window}-step means) differ by at most {100 * gap:.1f}%."]
    if "samples_per_s" in tr.get("fast", {}):
        epoch_s = res["n_windows"] / tr["fast"]["samples_per_s"]
        lines += ["", f"300 epochs at the default trainer's rate: {300 * epoch_s / 60:.1f} minutes of steps "
                      f"({epoch_s:.1f} s per epoch; the seed reports 240 s per epoch on one GPU)."]
    rows = res.get("predict", [])
    users = user_figures(res.get("predict_user", {}).get("rows", []))
    if rows and "previous_default_ms" in rows[0]:
        fused = "cuda_graph_fused_ms" in rows[0]
        default = default_column(res)
        compiled = ("CUDA graph (default) | default, TF32 off" if default == "cuda_graph_ms"
                    else "CUDA graph, compiled U-Net | compiled U-Net, TF32 off")
        fused_label = "CUDA graph, fused U-Net kernels" + (" (default)" if default == "cuda_graph_fused_ms" else "")
        lines += ["", f"| predict() per chunk | batch | eager | {compiled} | CUDA graph, "
                      "U-Net not compiled | " + (f"{fused_label} | " if fused else "")
                      + "previous default (plain CUDA graph, cuDNN) | default vs previous |"
                      + (" user path: predict() via load_policy |" if users else ""),
                  "|---|---|---|---|---|---|---|---|" + ("---|" if fused else "") + ("---|" if users else "")]
        for row in rows:
            user = users.get(f"{row['sampler']}:{row['steps']}") if row["batch"] == 1 else None
            lines.append(f"| {row['sampler'].upper()}-{row['steps']} | {row['batch']} | {row['eager_ms']:.1f} ms | "
                         f"{row['cuda_graph_ms']:.2f} ms | {row['cuda_graph_fp32_ms']:.2f} ms | "
                         f"{row['cuda_graph_no_compile_ms']:.2f} ms | "
                         + (f"{row['cuda_graph_fused_ms']:.2f} ms | " if fused else "")
                         + f"{row['previous_default_ms']:.2f} ms | "
                         f"{row['previous_default_ms'] / row[default]:.2f}x |"
                         + ((f" {user['chunk_ms']:.2f} ms |" if user else " |") if users else ""))
        unet = ("torch.compile'd U-Net" if default == "cuda_graph_ms"
                else "U-Net through the fused Triton kernels (GroupNorm, Mish and FiLM in one kernel per block)")
        lines += ["", f"The default CUDA graph replays the encoder (channels_last) and every denoising step of the "
                      f"{unet}, whose convolutions run as matrix multiplies, with every step's FiLM "
                      "conditioning computed before the loop. The graph columns time `predict_action` in the "
                      "benchmark's process with TF32 switched on globally."]
        if users:
            lines += ["", user_path_text(users)]
    elif rows:  # results written before the predict levers
        compiled = any("cuda_graph_compiled_ms" in row for row in rows)
        lines += ["", "| predict() per chunk | batch | eager | CUDA graph (default) | CUDA graph, TF32 off |"
                  + (" CUDA graph of the compiled U-Net |" if compiled else ""),
                  "|---|---|---|---|---|" + ("---|" if compiled else "")]
        for row in rows:
            lines.append(f"| {row['sampler'].upper()}-{row['steps']} | {row['batch']} | {row['eager_ms']:.1f} ms | "
                         f"{row['cuda_graph_ms']:.1f} ms | {row['cuda_graph_fp32_ms']:.1f} ms |"
                         + (f" {row['cuda_graph_compiled_ms']:.1f} ms |" if "cuda_graph_compiled_ms" in row
                            else " not measured |" if compiled else ""))
    goals = target_lines(res)
    if goals:
        lines += ["", "Goals at the seed config:", *goals]
    return "\n".join(lines)


TARGETS = {"samples_per_s": 8000.0, "vs_eager_dataloader": 4.0, "peak_gpu_mem_gib": 4.0, "predict_ms": 5.0,
           "later_first_action_s": 3.0}
"""The GPU speed goals at the seed config: training samples/s at batch 64, the default trainer over the plain
eager DataLoader step in the same run, peak GPU memory of the default step besides its GPU-resident dataset (GiB,
the whole peak for results that do not give the dataset's size), predict() ms per chunk at
batch 1 (through ``load_policy`` where the results have the user path, else the graph alone), and seconds from
``load_policy`` to the first action in a later process."""


def _spec_name(spec: str) -> str:
    """``ddpm:10`` -> ``DDPM-10`` (suffixes such as ``:fused`` kept)."""
    name, steps, *rest = spec.split(":")
    return f"{name.upper()}-{steps}" + "".join(f" {r}" for r in rest)


def user_path_text(users: dict[str, dict[str, float]]) -> str:
    """The paragraph under the predict table that words the user path's figures (:func:`user_figures`)."""
    parts = []
    for spec, f in users.items():
        text = f"{_spec_name(spec)} {f['chunk_ms']:.2f} ms per chunk (the model alone {f['model_only_ms']:.2f} ms)"
        if "first_action_first_s" in f and "first_action_later_s" in f:
            text += (f", first action {f['first_action_first_s']:.1f} s after `load_policy` in a first process on "
                     f"empty compile caches and {f['first_action_later_s']:.1f} s in a later one")
        parts.append(text)
    return ("User path (`benchmark_predict_user.py`, run by the benchmark): a fresh process per figure, PyTorch's "
            "default flags, numpy in and out through `load_policy` at batch 1, two processes per sampler (the "
            "larger of their medians over the chunks each computed): " + "; ".join(parts) + ".")


def target_lines(res: dict[str, Any]) -> list[str]:
    """One line per goal of ``TARGETS`` that the results can answer: measured value and whether it is met."""
    tr, lines = res["training"], []

    def line(goal: str, value: str, met: bool) -> None:
        lines.append(f"- {goal}: {value}, {'met' if met else 'not met'}")

    fast = tr.get("fast", {})
    if "samples_per_s" in fast:
        line(f">= {TARGETS['samples_per_s']:,.0f} samples/s", f"{fast['samples_per_s']:,.0f}",
             fast["samples_per_s"] >= TARGETS["samples_per_s"])
        base = tr.get("eager_dataloader", {}).get("samples_per_s")
        if base:
            ratio = fast["samples_per_s"] / base
            line(f">= {TARGETS['vs_eager_dataloader']:.0f}x the plain eager DataLoader step", f"{ratio:.2f}x",
                 ratio >= TARGETS["vs_eager_dataloader"])
        mem, dataset = fast["peak_gpu_mem_gib"], res.get("dataset_gib")
        if dataset is not None:  # the goal leaves out the dataset's GPU copy (page-locked host memory needs none)
            line(f"peak GPU memory besides the GPU-resident dataset <= {TARGETS['peak_gpu_mem_gib']:.0f} GiB",
                 f"{mem - dataset:.1f} GiB ({mem:.1f} GiB in all)", mem - dataset <= TARGETS["peak_gpu_mem_gib"])
        else:  # results written before the dataset's size was recorded
            line(f"peak GPU memory <= {TARGETS['peak_gpu_mem_gib']:.0f} GiB", f"{mem:.1f} GiB",
                 mem <= TARGETS["peak_gpu_mem_gib"])
    batch1 = [row for row in res.get("predict", []) if row["batch"] == 1 and row["steps"] <= 10]
    default = default_column(res)
    users = {spec: f for spec, f in user_figures(res.get("predict_user", {}).get("rows", [])).items()
             if int(spec.split(":")[1]) <= 10 and spec.count(":") == 1}  # the defaults, not :bf16 or :compiled
    if users:
        spec, best = min(users.items(), key=lambda kv: kv[1]["chunk_ms"])
        graph = next((row[default] for row in batch1 if f"{row['sampler']}:{row['steps']}" == spec), None)
        alone = f"; the graph alone {graph:.2f} ms" if graph is not None else ""
        line(f"predict() through load_policy <= {TARGETS['predict_ms']:.0f} ms per chunk at batch 1 (default flags)",
             f"{best['chunk_ms']:.2f} ms ({_spec_name(spec)}{alone})", best["chunk_ms"] <= TARGETS["predict_ms"])
        later = [(f["first_action_later_s"], s) for s, f in users.items() if "first_action_later_s" in f]
        if later:
            seconds, spec = min(later)
            line(f"a later process's first action <= {TARGETS['later_first_action_s']:.0f} s after load_policy",
                 f"{seconds:.1f} s ({_spec_name(spec)})", seconds <= TARGETS["later_first_action_s"])
    elif batch1:
        best = min(batch1, key=lambda row: row[default])
        line(f"predict() <= {TARGETS['predict_ms']:.0f} ms per chunk at batch 1",
             f"{best[default]:.2f} ms ({best['sampler'].upper()}-{best['steps']})",
             best[default] <= TARGETS["predict_ms"])
    return lines


def readme_source(text: str) -> str:
    """The results JSON that README.md's performance block was rendered from (named in its first line)."""
    block = text.split(README_START, 1)[1].split(README_END, 1)[0]
    match = re.search(r"`(benchmarks/results/[\w.-]+\.json)`", block)
    if match is None:
        raise ValueError("README.md's performance block names no benchmarks/results/*.json file")
    return match.group(1)


def update_readme(res: dict[str, Any], source: str, readme: Path) -> None:
    """Replace the performance block of ``readme`` (README.md) by the rendering of ``res`` (read from ``source``)."""
    text = readme.read_text()
    if README_START not in text or README_END not in text:
        raise SystemExit(f"{readme}: no {README_START} ... {README_END} block to update")
    head, rest = text.split(README_START, 1)
    _, tail = rest.split(README_END, 1)
    readme.write_text(f"{head}{README_START}\n{render_table(res, source)}\n{README_END}{tail}")
    print(f"updated {readme}")


__all__ = [
    "BASELINES", "README_END", "README_START", "TARGETS", "curve_agreement", "default_column", "readme_source", "render_table",
    "speed_ratios", "target_lines", "update_readme", "user_path_text",
]
