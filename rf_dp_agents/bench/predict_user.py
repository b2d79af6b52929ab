"""predict() as a user's control loop calls it, one fresh process per measurement: the runner behind
``scripts/benchmark_predict_user.py`` and the user-path rows of ``scripts/benchmark.py``.

Each measurement is a child process of the script (``--child SPEC``), which installs its count of modules compiled
from source before it imports anything; this module starts the children two per sampler (a first and a second
process on the same compile caches), reads back the JSON line each prints, and words the figures.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable, Sequence

USER_SAMPLERS = ("ddim:10", "ddpm:10", "ddpm:100", "ddpm:10:compiled", "ddpm:10:bf16")
"""Samplers timed by default, as ``name:steps`` specs (``offline_eval.SamplerSpec``): the defaults, then DDPM-10
through the previous default (the torch.compile'd U-Net) and with the opt-in bfloat16 weights beside them."""

RUNS = ("first process", "second process")
"""The two processes per sampler, in order, on the same compile caches."""


class ChildFailed(RuntimeError):
    """A measurement's process exited with an error; ``returncode`` and the end of its stderr are kept."""

    def __init__(self, spec: str, returncode: int, stderr: str) -> None:
        super().__init__(f"predict() measurement {spec!r} failed (exit {returncode}):\n{stderr[-4000:]}")
        self.returncode = returncode


def synthetic_checkpoint(kind: str, folder: Path) -> Path:
    """A randomly initialised checkpoint of the default (``seed``) or tiny config under ``folder`` (the timing
    ignores the weights)."""
    import torch

    from rf_dp_agents.checkpoint import save_checkpoint
    from rf_dp_agents.config import ModelConfig, tiny_model_config
    from rf_dp_agents.model import DiffusionPolicy

    if kind not in ("seed", "tiny"):
        raise ValueError(f"synthetic checkpoint kind {kind!r}: expected 'seed' or 'tiny'")
    torch.manual_seed(0)
    config = ModelConfig() if kind == "seed" else tiny_model_config(image_shape=(3, 48, 64))
    return save_checkpoint(folder / f"synthetic-{kind}", DiffusionPolicy(config))


def child_env(root: Path, work: Path, fresh_cache: bool, bytecode_cache: Path | None) -> dict[str, str]:
    """The children's environment: the project on ``PYTHONPATH``; with ``fresh_cache`` empty TorchInductor and
    Triton caches under ``work`` (as on a new machine); with ``bytecode_cache`` a writable bytecode cache there, as
    a pip install has."""
    env = {k: v for k, v in os.environ.items() if k != "TORCHINDUCTOR_CACHE_DIR"}
    if fresh_cache:  # TorchInductor's caches and Triton's own (the encoder's and fused U-Net's kernels)
        env["RF_DP_COMPILE_CACHE"] = str(work / "compile-cache")
        env["TRITON_CACHE_DIR"] = str(work / "triton-cache")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(root), env.get("PYTHONPATH")]))
    if bytecode_cache is not None:
        env["PYTHONPYCACHEPREFIX"] = str(bytecode_cache.expanduser().resolve())
        env.pop("PYTHONDONTWRITEBYTECODE", None)
    return env


def run_user_path(
    script: Path,
    checkpoint: Path,
    samplers: Sequence[str],
    child_args: Sequence[str],
    env: dict[str, str],
    report: Callable[[str], None] = print,
) -> list[dict[str, Any]]:
    """Two fresh processes per sampler spec (``script checkpoint --child SPEC *child_args``), one after the other;
    each row is the child's JSON plus ``process`` (one of :data:`RUNS`). ``report`` gets the lines of
    :func:`describe` as each row arrives. Raises :class:`ChildFailed` when a process fails."""
    rows = []
    for spec in samplers:
        for run in RUNS:
            cmd = [sys.executable, str(script), str(checkpoint), "--child", spec, *child_args]
            out = subprocess.run(cmd, env=env, capture_output=True, text=True)
            if out.returncode != 0:
                raise ChildFailed(spec, out.returncode, out.stderr)
            lines = out.stdout.strip().splitlines()
            if not lines:
                raise ChildFailed(spec, 0, f"no JSON line on stdout; stderr:\n{out.stderr}")
            row = json.loads(lines[-1]) | {"process": run}
            rows.append(row)
            for line in describe(row):
                report(line)
    return rows


def describe(row: dict[str, Any]) -> list[str]:
    """The printed account of one measurement: chunk times, start-up, modules compiled from source, the graph
    build's parts, TorchDynamo's phases and the first call's profile where the row has them."""
    pad = " " * 28
    lines = [f"{row['sampler']:>12} {row['process']:>14}: chunk {row['chunk_ms_median']:.2f} ms "
             f"(p90 {row['chunk_ms_p90']:.2f}), all calls {row['predict_ms_mean_all_calls']:.2f} ms, model only "
             f"{row['model_only_ms_median']:.2f} ms; load_policy {row['load_policy_s']:.1f} s, first predict "
             f"{row['first_predict_s']:.1f} s, load_policy->first action {row['load_policy_to_first_action_s']:.1f} s;"
             f" flags unchanged {row['global_flags_unchanged']}; log {row['log_lines']}"]
    src, first = row["compiled_from_source"]["process"], row["compiled_from_source"]["first_predict"]
    lines.append(f"{pad}modules compiled from source: {src['modules']} ({src['seconds']:.2f} s), "
                 f"{first['modules']} of them in the first predict ({first['seconds']:.2f} s)")
    for name, parts in row.get("graph_build_s", {}).items():
        lines.append(f"{pad}graph {name}: " + ", ".join(f"{k} {v:.2f} s" for k, v in parts.items()))
    if row.get("compile_times_s"):
        lines.append(f"{pad}TorchDynamo: " + ", ".join(f"{k} {v:.2f} s" for k, v in
                                                      list(row["compile_times_s"].items())[:6]))
    for kind, top in (row.get("first_predict_profile") or {}).items():
        lines.append(f"{pad}first predict, by {kind} time:")
        lines += [f"{pad}  {seconds:8.2f} s {calls:>8} {where}" for seconds, calls, where in top]
    return lines


def user_figures(rows: Sequence[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Per sampler spec: the chunk median and the model alone (the larger of its two processes'), and
    ``load_policy`` to the first action in the first and in the second process."""
    figures: dict[str, dict[str, float]] = {}
    for row in rows:
        entry = figures.setdefault(row["sampler"], {"chunk_ms": 0.0, "model_only_ms": 0.0})
        entry["chunk_ms"] = max(entry["chunk_ms"], row["chunk_ms_median"])
        entry["model_only_ms"] = max(entry["model_only_ms"], row["model_only_ms_median"])
        key = "first_action_first_s" if row["process"] == RUNS[0] else "first_action_later_s"
        entry[key] = row["load_policy_to_first_action_s"]
    return figures


__all__ = ["RUNS", "USER_SAMPLERS", "ChildFailed", "child_env", "describe", "run_user_path", "synthetic_checkpoint",
           "user_figures"]
