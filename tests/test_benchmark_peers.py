"""The peers benchmark's bookkeeping: commands, reading each peer's results JSON, ranges and ratios, the table,
and a failing peer (on this CPU machine the benchmark refuses to run) reported without stopping the others."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from rf_dp_agents.bench.peer_runs import OURS, goal_lines, peer_command, read_peer, render, run_peers, summarize

ROOT = Path(__file__).resolve().parent.parent


def ours(samples: float, peak: float, dataset: float = 3.0) -> dict:
    return {"dataset_gib": dataset, "training": {"fast": {"samples_per_s": samples, "step_ms": 64e3 / samples,
                                                           "peak_gpu_mem_gib": peak}}}


def lerobot(samples: float, peak: float) -> dict:
    return {"training": {"lerobot": {"samples_per_s": samples, "step_ms": 64e3 / samples, "peak_gpu_mem_gib": peak}}}


def test_peer_command_runs_one_peer_per_process() -> None:
    cmd = peer_command(Path("b.py"), "lerobot_tf32", 256, Path("d.zarr"), Path("o.json"))
    assert cmd[0] == sys.executable and cmd[1] == "b.py"
    assert cmd[2:] == ["--only", "lerobot", "--lerobot-tf32", "--batch-size", "256", "--data", "d.zarr",
                       "--out", "o.json"]
    assert "--trainer-rows" in peer_command(Path("b.py"), OURS, 64, Path("d"), Path("o"))
    with pytest.raises(ValueError, match="unknown peer 'lerobt'"):
        peer_command(Path("b.py"), "lerobt", 64, Path("d"), Path("o"))


def test_read_peer_takes_the_dataset_out_of_our_peak() -> None:
    row = read_peer(OURS, ours(3000.0, 7.5, dataset=3.1))
    assert row["samples_per_s"] == 3000.0
    assert row["peak_besides_dataset_gib"] == pytest.approx(4.4)
    assert "peak_besides_dataset_gib" not in read_peer("lerobot", lerobot(1500.0, 5.5))
    assert read_peer("lerobot", {"training": {"lerobot": {"error": "ImportError: no lerobot"}}}) == {
        "error": "ImportError: no lerobot"}


def test_summary_gives_ranges_and_the_ratio_against_the_fastest_lerobot_setting() -> None:
    rows = []
    for trial, (a, b, c) in enumerate([(3000.0, 1500.0, 1550.0), (3100.0, 1490.0, 1540.0)]):
        rows += [{"peer": OURS, "batch_size": 64, "trial": trial, **read_peer(OURS, ours(a, 7.5 + trial))},
                 {"peer": "lerobot", "batch_size": 64, "trial": trial, **read_peer("lerobot", lerobot(b, 5.5))},
                 {"peer": "lerobot_tf32", "batch_size": 64, "trial": trial, **read_peer("lerobot", lerobot(c, 5.6))}]
    rows.append({"peer": OURS, "batch_size": 256, "trial": 0, "error": "CUDA out of memory"})
    summary = summarize(rows)
    peers = summary[64]["peers"]
    assert peers[OURS]["samples_per_s"] == [3000.0, 3100.0]
    assert peers[OURS]["peak_gpu_mem_gib"] == 8.5 and peers[OURS]["peak_besides_dataset_gib"] == 5.5
    assert peers["lerobot_tf32"]["samples_per_s"] == [1540.0, 1550.0]
    assert summary[64]["ours_vs_fastest_lerobot"] == pytest.approx([3000 / 1550, 3100 / 1540])
    assert summary[256] == {"peers": {OURS: {"error": "CUDA out of memory"}}}
    table = render(summary)
    assert "| rf_dp_agents | 64 | 3,000-3,100 | 8.50 GiB (5.50 GiB besides the dataset) | 2 |" in table
    assert "| rf_dp_agents / fastest lerobot | 64 | 1.94-2.01x | | |" in table
    assert "failed: 'CUDA out of memory'" in table
    assert goal_lines(summary) == [
        "- batch 64, >= 4,000 samples/s: 3,000, not met",
        "- batch 64, >= 2.6x the fastest lerobot setting: 1.94x, not met",
        "- batch 64, peak GPU memory besides the dataset <= 4 GiB: 5.50 GiB, not met",
    ]
    assert table.endswith("Goals:\n" + "\n".join(goal_lines(summary)))
    met = summarize([{"peer": OURS, "batch_size": 256, "trial": 0, **read_peer(OURS, ours(5600.0, 9.0, dataset=3.0))}])
    assert goal_lines(met) == ["- batch 256, >= 5,500 samples/s: 5,600, met"]


def test_a_failing_peer_is_reported_and_the_others_still_run(tmp_path: Path) -> None:
    seen: list[list[str]] = []
    rows = run_peers(ROOT / "scripts" / "benchmark.py", ["lerobot", "lerobot_tf32"], [8], 1, tmp_path / "d.zarr",
                     tmp_path / "work", timeout_s=300, on_row=lambda so_far: seen.append([r["peer"] for r in so_far]))
    assert [r["peer"] for r in rows] == ["lerobot", "lerobot_tf32"]
    assert seen == [["lerobot"], ["lerobot", "lerobot_tf32"]]  # the rows so far, after each run
    for row in rows:  # no GPU here: each process exits with the benchmark's own message
        assert "no CUDA device is visible" in row["error"]
