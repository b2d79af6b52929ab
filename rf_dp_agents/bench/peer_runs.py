"""Training peers side by side, each in its own clean process (``scripts/benchmark_peers.py``).

Every measurement is one fresh ``scripts/benchmark.py`` process that runs one peer and nothing else: our default
trainer end to end (``--only trainer --trainer-rows fast``: zarr, GPU-resident data, the CUDA-graph step), or
lerobot's DiffusionPolicy training step at the same shapes (``--only lerobot``), once with PyTorch's default
precision flags (TF32 matrix multiplies off, as lerobot runs) and once with TF32 on. The peers alternate within
each trial, so a drift of the machine reaches all of them.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Sequence

PEERS: dict[str, list[str]] = {
    "rf_dp_agents": ["--only", "trainer", "--trainer-rows", "fast"],
    "lerobot": ["--only", "lerobot"],
    "lerobot_tf32": ["--only", "lerobot", "--lerobot-tf32"],
}
"""Each peer's arguments to ``scripts/benchmark.py``."""
OURS = "rf_dp_agents"
GOALS: dict[int, dict[str, float]] = {
    64: {"samples_per_s": 4000.0, "vs_lerobot": 2.6, "peak_besides_dataset_gib": 4.0},
    256: {"samples_per_s": 5500.0},
}
"""The training goals per batch size: our samples/s, our speed over the fastest lerobot setting, and peak GPU memory
besides the GPU-resident dataset (judged on the slowest trial and the largest peak)."""


def peer_command(script: Path, peer: str, batch_size: int, data: Path, out: Path) -> list[str]:
    """The command line of one measurement: ``peer`` at ``batch_size``, results JSON to ``out``."""
    if peer not in PEERS:
        raise ValueError(f"unknown peer {peer!r}; choose from {sorted(PEERS)}")
    return [sys.executable, str(script), *PEERS[peer], "--batch-size", str(batch_size), "--data", str(data),
            "--out", str(out)]


def read_peer(peer: str, doc: dict[str, Any]) -> dict[str, Any]:
    """The figures of one measurement's results JSON: samples/s, ms per step, peak GPU memory (and, for our
    trainer, the part of it that is the GPU-resident dataset)."""
    row = doc["training"]["fast" if peer == OURS else "lerobot"]
    if "error" in row:
        return {"error": row["error"]}
    out = {key: row[key] for key in ("samples_per_s", "step_ms", "peak_gpu_mem_gib")}
    if peer == OURS:
        out["dataset_gib"] = doc.get("dataset_gib")
        out["peak_besides_dataset_gib"] = row["peak_gpu_mem_gib"] - (doc.get("dataset_gib") or 0.0)
    return out


def run_peers(
    script: Path, peers: Sequence[str], batch_sizes: Sequence[int], repeats: int, data: Path, work: Path,
    timeout_s: float = 900.0, on_row: Callable[[list[dict[str, Any]]], None] | None = None,
) -> list[dict[str, Any]]:
    """Run every (batch size, trial, peer) in a fresh process; one row each, an ``error`` where a run failed.
    ``on_row`` gets the rows so far after each run (to save them as they come)."""
    rows = []
    work.mkdir(parents=True, exist_ok=True)
    for batch in batch_sizes:
        for trial in range(repeats):
            for peer in peers:
                out = work / f"{peer}_b{batch}_t{trial}.json"
                t0 = time.perf_counter()
                try:
                    done = subprocess.run(peer_command(script, peer, batch, data, out), capture_output=True,
                                          text=True, timeout=timeout_s)
                    failed = done.returncode != 0 or not out.exists()
                    detail = (done.stderr or done.stdout)[-2000:] if failed else ""
                except subprocess.TimeoutExpired:
                    failed, detail = True, f"timed out after {timeout_s:.0f} s"
                row: dict[str, Any] = {"peer": peer, "batch_size": batch, "trial": trial,
                                       "wall_s": time.perf_counter() - t0}
                row |= {"error": detail} if failed else read_peer(peer, json.loads(out.read_text()))
                rows.append(row)
                shown = row.get("error", "")[-300:] if "error" in row else (
                    f"{row['samples_per_s']:,.0f} samples/s, peak {row['peak_gpu_mem_gib']:.2f} GiB")
                print(f"batch {batch} trial {trial} {peer:>13}: {shown}", flush=True)
                if on_row is not None:
                    on_row(rows)
    return rows


def summarize(rows: Sequence[dict[str, Any]]) -> dict[int, dict[str, Any]]:
    """Per batch size: each peer's samples/s range and peak memory, and our speed over the fastest lerobot
    setting as a range (our slowest over its fastest trial, our fastest over its slowest)."""
    out: dict[int, dict[str, Any]] = {}
    for batch in sorted({r["batch_size"] for r in rows}):
        peers: dict[str, Any] = {}
        for peer in dict.fromkeys(r["peer"] for r in rows if r["batch_size"] == batch):
            ok = [r for r in rows if r["batch_size"] == batch and r["peer"] == peer and "error" not in r]
            if not ok:
                peers[peer] = {"error": next(r["error"] for r in rows if r["batch_size"] == batch
                                             and r["peer"] == peer)}
                continue
            speeds = [r["samples_per_s"] for r in ok]
            peers[peer] = {"samples_per_s": [min(speeds), max(speeds)], "trials": len(ok),
                           "peak_gpu_mem_gib": max(r["peak_gpu_mem_gib"] for r in ok)}
            if peer == OURS:
                peers[peer]["peak_besides_dataset_gib"] = max(r["peak_besides_dataset_gib"] for r in ok)
        entry: dict[str, Any] = {"peers": peers}
        lerobot = [p for name, p in peers.items() if name != OURS and "samples_per_s" in p]
        if OURS in peers and "samples_per_s" in peers[OURS] and lerobot:
            best = max(lerobot, key=lambda p: p["samples_per_s"][1])
            lo, hi = peers[OURS]["samples_per_s"]
            entry["ours_vs_fastest_lerobot"] = [lo / best["samples_per_s"][1], hi / best["samples_per_s"][0]]
        out[batch] = entry
    return out


def goal_lines(summary: dict[int, dict[str, Any]]) -> list[str]:
    """One line per goal of :data:`GOALS` that the summary can answer: the measured value and whether it is met."""
    lines = []
    for batch, goals in GOALS.items():
        ours = summary.get(batch, {}).get("peers", {}).get(OURS, {})
        if "samples_per_s" not in ours:
            continue
        slowest = ours["samples_per_s"][0]
        checks = [(f">= {goals['samples_per_s']:,.0f} samples/s", f"{slowest:,.0f}", slowest >= goals["samples_per_s"])]
        ratio = summary[batch].get("ours_vs_fastest_lerobot")
        if "vs_lerobot" in goals and ratio is not None:
            checks.append((f">= {goals['vs_lerobot']}x the fastest lerobot setting", f"{ratio[0]:.2f}x",
                           ratio[0] >= goals["vs_lerobot"]))
        if "peak_besides_dataset_gib" in goals:
            peak = ours["peak_besides_dataset_gib"]
            checks.append((f"peak GPU memory besides the dataset <= {goals['peak_besides_dataset_gib']:.0f} GiB",
                           f"{peak:.2f} GiB", peak <= goals["peak_besides_dataset_gib"]))
        lines += [f"- batch {batch}, {goal}: {value}, {'met' if met else 'not met'}" for goal, value, met in checks]
    return lines


def render(summary: dict[int, dict[str, Any]]) -> str:
    """A markdown table of :func:`summarize`'s result: one row per peer and batch size."""
    lines = ["| peer | batch | samples/s | peak GPU memory | trials |", "|---|---|---|---|---|"]
    for batch, entry in summary.items():
        for peer, p in entry["peers"].items():
            if "error" in p:
                lines.append(f"| {peer} | {batch} | failed: {p['error'][-120:]!r} | | 0 |")
                continue
            lo, hi = p["samples_per_s"]
            mem = f"{p['peak_gpu_mem_gib']:.2f} GiB"
            if "peak_besides_dataset_gib" in p:
                mem += f" ({p['peak_besides_dataset_gib']:.2f} GiB besides the dataset)"
            lines.append(f"| {peer} | {batch} | {lo:,.0f}-{hi:,.0f} | {mem} | {p['trials']} |")
        if "ours_vs_fastest_lerobot" in entry:
            lo, hi = entry["ours_vs_fastest_lerobot"]
            lines.append(f"| {OURS} / fastest lerobot | {batch} | {lo:.2f}-{hi:.2f}x | | |")
    goals = goal_lines(summary)
    return "\n".join(lines + (["", "Goals:", *goals] if goals else []))


__all__ = ["GOALS", "OURS", "PEERS", "goal_lines", "peer_command", "read_peer", "render", "run_peers", "summarize"]
