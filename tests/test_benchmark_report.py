"""The README's performance table is the rendering of the committed GPU results JSON (docs match the data)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from rf_dp_agents.bench import report

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
        "- peak GPU memory <= 4 GiB: 5.0 GiB (3.0 GiB without the GPU-resident dataset), not met",
        "- predict() <= 5 ms per chunk at batch 1: 4.50 ms (DDPM-10), met",
    ]


def test_curve_agreement() -> None:
    same = report.curve_agreement([1.0, 0.8, 0.6, 0.4], [1.0, 0.8, 0.6, 0.4], window=2)
    assert same["max_rel_gap"] == 0.0 and same["fast_means"] == pytest.approx([0.9, 0.5])
    off = report.curve_agreement([1.1, 0.9, 0.6, 0.4, 9.0], [1.0, 0.8, 0.6, 0.4], window=2)
    assert off["max_rel_gap"] == pytest.approx(0.1 / 0.9)
