"""The success-rate table of results files: rates, intervals, seeds run and seeds not run, from the file itself."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

from rf_dp_agents.rollout.metrics import EpisodeResult, summarize
from rf_dp_agents.rollout.table import markdown_table, results_row

REPO = Path(__file__).resolve().parents[1]


def _doc(outcomes: list[tuple[int, int | None]], seeds: list[int]) -> dict:
    episodes = [EpisodeResult(seed=s, steps=100 if w is None else w, first_success_step={"success": w}) for s, w in outcomes]
    done = {s for s, _ in outcomes}
    return {
        "seeds": seeds,
        "pending_seeds": [s for s in seeds if s not in done],
        "complete": all(s in done for s in seeds),
        "summary": summarize(episodes, ["success"]),
        "episodes": [ep.to_dict() for ep in episodes],
        "policies": {"panda-0": {"config": {"sampler": "ddpm", "num_inference_steps": 10}}},
    }


def _wilson(k: int, n: int, z: float = 1.959963984540054) -> tuple[float, float]:
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return centre - half, centre + half


def test_row_reads_rate_interval_seeds_and_lengths() -> None:
    row = results_row("a", _doc([(10, 40), (11, None), (12, 60), (13, 50)], [10, 11, 12, 13, 14, 15]))
    lo, hi = _wilson(3, 4)
    assert row["success"] == f"75% (3/4) [{100 * lo:.1f}, {100 * hi:.1f}]"
    assert row["episodes"] == "4 (seeds 10-13), 2 of 6 not run"
    assert row["sampler"] == "DDPM-10" and row["mean length, successes"] == "50"
    assert results_row("b", _doc([(10, None), (12, None)], [10, 11, 12]))["episodes"] == "2 (seeds 10, 12), 1 of 3 not run"
    assert results_row("c", _doc([], [10]))["episodes"] == "0, 1 of 1 not run"


def test_table_puts_every_rule_and_the_length_last() -> None:
    one = {"run": "x", "success": "1", "mean length, successes": "9"}
    two = {"run": "y", "success": "2", "success_strict": "3", "mean length, successes": ""}
    lines = markdown_table([one, two]).splitlines()
    assert lines[0] == "| run | success | success_strict | mean length, successes |"
    assert lines[2] == "| x | 1 |  | 9 |" and lines[3] == "| y | 2 | 3 |  |"


def test_cli_labels_files_and_names_a_bad_one(tmp_path: Path) -> None:
    good = tmp_path / "r.json"
    good.write_text(json.dumps(_doc([(0, 5)], [0])))
    script = str(REPO / "scripts" / "results_table.py")
    out = subprocess.run([sys.executable, script, f"mine={good}", str(good)], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "| mine | DDPM-10 | 1 (seeds 0-0) |" in out.stdout and f"| {tmp_path.name}/r | " in out.stdout
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"summary": {}}))
    out = subprocess.run([sys.executable, script, str(bad)], capture_output=True, text=True)
    assert out.returncode == 2 and f"{bad}: not a rollout results file (no 'seeds' key)" in out.stderr


def test_sampler_cell_names_the_chunk_execution() -> None:
    doc = _doc([(10, 40)], [10])
    doc["policies"]["panda-0"]["chunk_execution"] = {"execute_steps": 6, "temporal_ensemble": None}
    assert results_row("k", doc)["sampler"] == "DDPM-10, first 6 of each chunk"
    doc["policies"]["panda-0"]["chunk_execution"] = {"execute_steps": None, "temporal_ensemble": 0.01}
    assert results_row("e", doc)["sampler"] == "DDPM-10, temporal ensembling 0.01"
