"""The README's performance table is the rendering of the committed GPU results JSON (docs match the data)."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def benchmark():
    spec = importlib.util.spec_from_file_location("benchmark_script", REPO / "scripts" / "benchmark.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the script is executed
    spec.loader.exec_module(module)
    return module


def newest_results() -> dict:
    files = sorted((REPO / "benchmarks" / "results").glob("*.json"))
    assert files, "no results JSON under benchmarks/results"
    return json.loads(files[-1].read_text())


def test_readme_table_matches_the_newest_results(benchmark) -> None:
    res = newest_results()
    table = benchmark.render_table(res)
    readme = (REPO / "README.md").read_text()
    block = readme.split(benchmark.README_START, 1)[1].split(benchmark.README_END, 1)[0]
    assert block.strip() == table.strip()
    fast = res["training"]["fast"]["samples_per_s"]
    assert f"{fast:,.0f}" in table
    assert res["ratios"]["fast_vs_eager_dataloader"] == pytest.approx(
        fast / res["training"]["eager_dataloader"]["samples_per_s"]
    )


def test_curve_agreement(benchmark) -> None:
    same = benchmark.curve_agreement([1.0, 0.8, 0.6, 0.4], [1.0, 0.8, 0.6, 0.4], window=2)
    assert same["max_rel_gap"] == 0.0 and same["fast_means"] == pytest.approx([0.9, 0.5])
    off = benchmark.curve_agreement([1.1, 0.9, 0.6, 0.4, 9.0], [1.0, 0.8, 0.6, 0.4], window=2)
    assert off["max_rel_gap"] == pytest.approx(0.1 / 0.9)
