"""The README's performance table is the rendering of the committed GPU results JSON (docs match the data)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from rf_dp_agents.bench import report
from rf_dp_agents.bench.predict_user import user_figures

REPO = Path(__file__).resolve().parents[1]


def test_readme_table_is_the_rendering_of_the_results_it_names() -> None:
    readme = (REPO / "README.md").read_text()
    source = report.readme_source(readme)
    res = json.loads((REPO / source).read_text())
    table = report.render_table(res, source)
    block = readme.split(report.README_START, 1)[1].split(report.README_END, 1)[0]
    assert block.strip() == table.strip()
    fast = res["training"]["fast"]["samples_per_s"]
    assert f"{fast:,.0f}" in table
    for name, ratio in res["ratios"].items():
        other = res["training"][name.removeprefix("fast_vs_")]["samples_per_s"]
        assert ratio == pytest.approx(fast / other)


def test_every_results_file_renders() -> None:
    """Older results (with the DataLoader and predict rows) and trainer-only results both render."""
    files = sorted((REPO / "benchmarks" / "results").glob("*-h200*.json"))
    assert files
    for path in files:
        table = report.render_table(json.loads(path.read_text()), path.name)
        assert path.name in table and "| training path |" in table


def test_a_result_without_a_baseline_row_renders_without_the_ratio_column() -> None:
    """``benchmark.py --only trainer --trainer-rows fast`` (what benchmark_peers.py runs) has no baseline row."""
    res = {"date": "2026-12-07", "gpu": "GPU", "torch": "2", "batch_size": 64, "n_windows": 10, "dataset_gib": 3.0,
           "training": {"fast": {"samples_per_s": 2700.0, "step_ms": 23.7, "peak_gpu_mem_gib": 6.5}}}
    table = report.render_table(res, "r.json")
    assert "| training path | samples/s | ms/step | peak GPU memory |\n|---|---|---|---|\n" in table
    assert "| 2,700 | 23.7 | 6.5 GiB |\n" in table


def test_goals_are_judged_from_the_results() -> None:
    res = {"training": {"fast": {"samples_per_s": 9000.0, "peak_gpu_mem_gib": 5.0},
                        "eager_dataloader": {"samples_per_s": 3000.0}},
           "dataset_gib": 2.0,
           "predict": [{"sampler": "ddim", "steps": 10, "batch": 1, "cuda_graph_ms": 6.0},
                       {"sampler": "ddpm", "steps": 10, "batch": 1, "cuda_graph_ms": 4.5},
                       {"sampler": "ddpm", "steps": 100, "batch": 1, "cuda_graph_ms": 1.0},
                       {"sampler": "ddpm", "steps": 10, "batch": 32, "cuda_graph_ms": 2.0}]}
    assert report.target_lines(res) == [
        "- >= 8,000 samples/s: 9,000, met",
        "- >= 4x the plain eager DataLoader step: 3.00x, not met",
        "- peak GPU memory besides the GPU-resident dataset <= 4 GiB: 3.0 GiB (5.0 GiB in all), met",
        "- predict() <= 5 ms per chunk at batch 1: 4.50 ms (DDPM-10), met",
    ]


def _user_row(sampler: str, process: str, chunk: float, first_action: float) -> dict:
    return {"sampler": sampler, "process": process, "chunk_ms_median": chunk, "model_only_ms_median": chunk - 0.5,
            "load_policy_to_first_action_s": first_action}


USER_ROWS = [_user_row("ddim:10", "first process", 6.0, 20.0), _user_row("ddim:10", "second process", 6.4, 5.5),
             _user_row("ddpm:10", "first process", 5.2, 21.0), _user_row("ddpm:10", "second process", 4.9, 2.5),
             _user_row("ddpm:100", "first process", 1.0, 9.0), _user_row("ddpm:100", "second process", 1.0, 1.0),
             _user_row("ddpm:10:bf16", "first process", 4.0, 9.0), _user_row("ddpm:10:bf16", "second process", 4.0, 1.5)]


def test_the_user_path_is_judged_before_the_graph_alone() -> None:
    """The predict goal quotes predict() through load_policy (the larger of two processes' medians), the start-up
    goal the fastest later process among 10-step samplers; 100-step samplers and opt-in settings (``:bf16``) judge
    neither."""
    res = {"training": {},
           "predict": [{"sampler": "ddpm", "steps": 10, "batch": 1, "cuda_graph_ms": 4.5}],
           "predict_user": {"rows": USER_ROWS}}
    assert report.target_lines(res) == [
        "- predict() through load_policy <= 5 ms per chunk at batch 1 (default flags): 5.20 ms (DDPM-10; the graph "
        "alone 4.50 ms), not met",
        "- a later process's first action <= 3 s after load_policy: 2.5 s (DDPM-10), met",
    ]
    figures = user_figures(USER_ROWS)
    assert figures["ddim:10"] == {"chunk_ms": 6.4, "model_only_ms": 5.9, "first_action_first_s": 20.0,
                                  "first_action_later_s": 5.5}


def test_the_user_path_is_printed_beside_the_graph_figure() -> None:
    row = {"eager_ms": 50.0, "cuda_graph_ms": 4.5, "cuda_graph_fp32_ms": 8.0, "cuda_graph_no_compile_ms": 9.0,
           "previous_default_ms": 17.0}
    res = {"date": "2026-12-07", "gpu": "GPU", "torch": "2", "batch_size": 64, "n_windows": 10, "training": {},
           "predict": [{"sampler": "ddpm", "steps": 10, "batch": 1, **row},
                       {"sampler": "ddpm", "steps": 10, "batch": 32, **row}],
           "predict_user": {"rows": USER_ROWS}}
    table = report.render_table(res, "r.json")
    assert "| default vs previous | user path: predict() via load_policy |\n" in table
    assert "| 4.50 ms | 8.00 ms | 9.00 ms | 17.00 ms | 3.78x | 5.20 ms |\n" in table  # batch 1: the user figure
    assert "| 17.00 ms | 3.78x | |\n" in table  # batch 32: none
    assert ("DDPM-10 5.20 ms per chunk (the model alone 4.70 ms), first action 21.0 s after `load_policy` in a "
            "first process on empty compile caches and 2.5 s in a later one") in table


def test_the_fused_default_is_named_and_compared_with_the_previous_default() -> None:
    row = {"eager_ms": 50.0, "cuda_graph_ms": 6.0, "cuda_graph_fp32_ms": 8.0, "cuda_graph_no_compile_ms": 9.0,
           "cuda_graph_fused_ms": 4.25, "previous_default_ms": 17.0}
    res = {"date": "2026-12-08", "gpu": "GPU", "torch": "2", "batch_size": 64, "n_windows": 10, "training": {},
           "predict": [{"sampler": "ddpm", "steps": 10, "batch": 1, **row}], "predict_default": "cuda_graph_fused_ms"}
    table = report.render_table(res, "r.json")
    assert "| CUDA graph, compiled U-Net | compiled U-Net, TF32 off |" in table
    assert "| CUDA graph, fused U-Net kernels (default) |" in table and "CUDA graph (default)" not in table
    assert "| 4.25 ms | 17.00 ms | 4.00x |\n" in table  # previous default over the fused default
    assert "predict() <= 5 ms per chunk at batch 1: 4.25 ms (DDPM-10)" in table


def test_curve_agreement() -> None:
    same = report.curve_agreement([1.0, 0.8, 0.6, 0.4], [1.0, 0.8, 0.6, 0.4], window=2)
    assert same["max_rel_gap"] == 0.0 and same["fast_means"] == pytest.approx([0.9, 0.5])
    off = report.curve_agreement([1.1, 0.9, 0.6, 0.4, 9.0], [1.0, 0.8, 0.6, 0.4], window=2)
    assert off["max_rel_gap"] == pytest.approx(0.1 / 0.9)
