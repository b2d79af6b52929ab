"""Rollout metrics: Wilson interval against published values, per-rule summaries, atomic results JSON."""

from __future__ import annotations

import json

import numpy as np
import pytest

from rf_dp_agents.rollout.metrics import (
    ConditionCount,
    EpisodeResult,
    condition_flags,
    format_summary,
    package_versions,
    summarize,
    wilson_interval,
    write_json_atomic,
)


@pytest.mark.parametrize(
    "successes, n, low, high",
    [
        # Newcombe (1998), Statistics in Medicine 17:857, Table I, method 3 (Wilson score, no continuity correction)
        (81, 263, 0.2553, 0.3662),
        (15, 148, 0.0624, 0.1605),
        (0, 20, 0.0, 0.1611),
        (1, 29, 0.0061, 0.1718),
        # symmetric case computed by hand: p = 0.5, n = 10 -> centre 0.5, half-width 0.2966
        (5, 10, 0.2366, 0.7634),
        (10, 10, 0.7225, 1.0),
    ],
)
def test_wilson_interval_matches_known_values(successes: int, n: int, low: float, high: float) -> None:
    lo, hi = wilson_interval(successes, n)
    assert lo == pytest.approx(low, abs=1e-4)
    assert hi == pytest.approx(high, abs=1e-4)


def test_wilson_interval_edge_cases_and_errors() -> None:
    assert wilson_interval(0, 0) == (0.0, 1.0)
    lo, hi = wilson_interval(3, 7)
    assert 0.0 <= lo < 3 / 7 < hi <= 1.0
    with pytest.raises(ValueError, match="successes=8, n=7"):
        wilson_interval(8, 7)
    with pytest.raises(ValueError):
        wilson_interval(-1, 5)


def _episodes() -> list[EpisodeResult]:
    return [
        EpisodeResult(seed=0, steps=40, first_success_step={"success": 30, "success_strict": 40}, planning_calls=10),
        EpisodeResult(seed=1, steps=50, first_success_step={"success": 20, "success_strict": None},
                      planning_calls=10, planning_failures=2),
        EpisodeResult(seed=2, steps=50, first_success_step={"success": None, "success_strict": None},
                      planning_calls=20, planning_failures=1),
    ]


def test_summarize_every_rule_and_lengths() -> None:
    summary = summarize(_episodes(), ["success", "success_strict"], topp=True)
    assert summary["n_episodes"] == 3
    assert summary["primary_rule"] == "success"
    lenient, strict = summary["rules"]["success"], summary["rules"]["success_strict"]
    assert (lenient["successes"], lenient["n"]) == (2, 3)
    assert lenient["success_rate"] == pytest.approx(2 / 3)
    assert lenient["ci95"] == pytest.approx(list(wilson_interval(2, 3)))
    # lengths under the lenient rule: first success 30, 20, and the full 50 for the failure
    assert lenient["episode_length"]["mean"] == pytest.approx(100 / 3)
    assert lenient["episode_length"]["median"] == 30
    assert lenient["episode_length_successful"]["mean"] == pytest.approx(25.0)
    assert lenient["episode_length_successful"]["median"] == pytest.approx(25.0)
    assert (strict["successes"], strict["n"]) == (1, 3)
    assert strict["episode_length"]["median"] == 50
    assert strict["episode_length_successful"]["mean"] == 40
    assert summary["success_rate"] == lenient["success_rate"]
    assert summary["episode_length"] == lenient["episode_length"]
    mp = summary["motion_planning"]
    assert (mp["calls"], mp["failures"], mp["episodes_with_failure"]) == (40, 3, 2)
    assert mp["failure_rate"] == pytest.approx(3 / 40)
    assert summary["env_steps"] == 140
    text = format_summary(summary)
    assert "success: 66.7% (2/3)" in text and "success_strict: 33.3% (1/3)" in text
    assert "motion-planning failures: 7.50% (3/40" in text


def test_summarize_without_successes_or_topp() -> None:
    eps = [EpisodeResult(seed=4, steps=12, first_success_step={"success": None})]
    summary = summarize(eps, ["success"])
    assert "motion_planning" not in summary
    assert summary["success_rate"] == 0.0
    assert summary["episode_length_successful"]["mean"] is None
    assert summary["episode_length"]["max"] == 12
    with pytest.raises(ValueError, match="at least one success rule"):
        summarize(eps, [])


def test_write_json_atomic_round_trip_and_refuses_nan(tmp_path) -> None:
    path = write_json_atomic(tmp_path / "out" / "results.json", {"a": [1, 2], "versions": package_versions(["pytest"])})
    doc = json.loads(path.read_text())
    assert doc["a"] == [1, 2]
    assert doc["versions"]["pytest"] == pytest.__version__
    assert sorted(p.name for p in path.parent.iterdir()) == ["results.json"]
    with pytest.raises(ValueError, match="bad.json"):
        write_json_atomic(tmp_path / "bad.json", {"x": float("nan")})
    assert not list(tmp_path.glob("*bad.json*"))


def test_metrics_video_and_config_import_without_the_simulator() -> None:
    import subprocess
    import sys

    code = (
        "import sys\n"
        "for name in ('mani_skill', 'sapien', 'envs', 'mplib'):\n"
        "    sys.modules[name] = None\n"
        "import rf_dp_agents.rollout as r\n"
        "import rf_dp_agents.rollout.metrics, rf_dp_agents.rollout.video, rf_dp_agents.rollout.config\n"
        "assert r.wilson_interval(1, 2) and r.RolloutConfig(task='LiftBarrier-rf').seeds == list(range(10000, 10010))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr


def test_condition_flags_and_counts() -> None:
    """The boolean info entries besides the rules are counted per step: steps held and the value at the end."""
    import torch

    info = {"success": torch.tensor([False]), "success_strict": torch.tensor([False]), "is_level": torch.tensor([True]),
            "is_grasped_0": np.array([False]), "elapsed_steps": torch.tensor([3]), "tilt": torch.tensor([1.5])}
    assert condition_flags(info, ["success", "success_strict"]) == ["is_grasped_0", "is_level"]
    count = ConditionCount()
    for level, grasped in ((True, False), (True, True), (False, True)):
        count.add({"is_level": level, "is_grasped_0": grasped})
    assert count.to_dict() == {"is_level": {"steps_held": 2, "at_end": False},
                               "is_grasped_0": {"steps_held": 2, "at_end": True}}
