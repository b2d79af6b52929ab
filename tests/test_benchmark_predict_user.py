"""``scripts/benchmark_predict_user.py`` end to end on the CPU with a tiny synthetic checkpoint: two fresh processes
per sampler, the first predict()'s profile by cumulative and by own time, and the count of modules compiled from
source, which a bytecode cache (``--bytecode-cache``) brings to zero in the second process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_bytecode_cache_and_profile(tmp_path: Path) -> None:
    out = tmp_path / "predict_user.json"
    env = dict(os.environ, PYTHONDONTWRITEBYTECODE="1")  # an installation that keeps no bytecode of its own
    cmd = [sys.executable, str(ROOT / "scripts" / "benchmark_predict_user.py"), "--synthetic", "tiny", "--device",
           "cpu", "--samplers", "ddpm:2", "--repeats", "2", "--profile-first", "3",
           "--bytecode-cache", str(tmp_path / "pycache"), "--output", str(out)]
    run = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=tmp_path, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    doc = json.loads(out.read_text())
    assert doc["bytecode_cache"] is True
    first, second = doc["rows"]
    assert (first["process"], second["process"]) == ("first process", "second process")
    # the first process compiled torch and the library from source into the empty cache; the second read it back
    assert first["compiled_from_source"]["process"]["modules"] > 100
    assert second["compiled_from_source"]["process"]["modules"] == 0
    for row in (first, second):
        profile = row["first_predict_profile"]
        assert set(profile) == {"cumulative", "own"}
        assert all(len(profile[kind]) == 3 for kind in profile)
        assert profile["cumulative"][0][0] >= profile["own"][0][0]  # a function's total includes its own time
    assert "modules compiled from source" in run.stdout
