"""Paired comparison of two results files: counts per seed in common, the exact McNemar p, the --paired CLI."""

from __future__ import annotations

import json
import subprocess
import sys
from math import comb
from pathlib import Path

import pytest

from rf_dp_agents.rollout.compare import mcnemar_exact, paired_counts, paired_table
from rf_dp_agents.rollout.metrics import EpisodeResult, summarize

REPO = Path(__file__).resolve().parents[1]


def _doc(outcomes: dict[int, tuple[bool, bool]]) -> dict:
    """A results document with rules success and success_strict, one episode per seed."""
    episodes = [EpisodeResult(seed=s, steps=50, first_success_step={"success": 10 if a else None,
                                                                      "success_strict": 20 if b else None})
                for s, (a, b) in outcomes.items()]
    return {"seeds": sorted(outcomes), "pending_seeds": [], "complete": True, "policies": {},
            "summary": summarize(episodes, ["success", "success_strict"]),
            "episodes": [ep.to_dict() for ep in episodes]}


def test_mcnemar_matches_the_binomial_tail() -> None:
    assert mcnemar_exact(0, 0) == 1.0 and mcnemar_exact(3, 3) == 1.0
    assert mcnemar_exact(0, 5) == pytest.approx(2 / 32)
    assert mcnemar_exact(22, 5) == pytest.approx(2 * sum(comb(27, k) for k in range(6)) / 2**27)
    assert mcnemar_exact(5, 22) == mcnemar_exact(22, 5)
    with pytest.raises(ValueError, match="counts >= 0"):
        mcnemar_exact(-1, 2)


def test_counts_pair_the_seeds_both_files_ran() -> None:
    first = _doc({1: (True, True), 2: (True, False), 3: (False, False), 4: (True, True), 9: (True, True)})
    second = _doc({1: (True, False), 2: (False, False), 3: (True, False), 4: (True, True), 7: (False, False)})
    c = paired_counts(first, second, "success")
    assert c["seeds"] == [1, 2, 3, 4]
    assert (c["both"], c["first_only"], c["second_only"], c["neither"]) == (2, 1, 1, 0)
    s = paired_counts(first, second, "success_strict")
    assert (s["both"], s["first_only"], s["second_only"], s["neither"]) == (1, 1, 0, 2)
    assert s["p_value"] == mcnemar_exact(1, 0)
    table = paired_table(first, second, ("A", "B")).splitlines()
    assert table[:2] == ["first: A", "second: B"]
    assert table[5] == "| success | 4 (1-4) | 2 | 1 | 1 | 0 | 1 |"


def test_no_common_seed_or_missing_rule_is_named() -> None:
    with pytest.raises(ValueError, match="A and B share no seed"):
        paired_counts(_doc({1: (True, True)}), _doc({2: (True, True)}), "success", ("A", "B"))
    with pytest.raises(ValueError, match="A: episode seed 1 has no success rule 'success_lenient'"):
        paired_counts(_doc({1: (True, True)}), _doc({1: (True, True)}), "success_lenient", ("A", "B"))


def test_cli_compares_two_files_and_refuses_three(tmp_path: Path) -> None:
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    a.write_text(json.dumps(_doc({s: (True, s % 2 == 0) for s in range(10)})))
    b.write_text(json.dumps(_doc({s: (s < 5, False) for s in range(10)})))
    script = str(REPO / "scripts" / "results_table.py")
    out = subprocess.run([sys.executable, script, "--paired", f"ten={a}", str(b)], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert f"first: ten\nsecond: {b}" in out.stdout
    assert f"| success_strict | 10 (0-9) | 0 | 5 | 0 | 5 | {mcnemar_exact(5, 0):.3g} |" in out.stdout
    out = subprocess.run([sys.executable, script, "--paired", str(a), str(b), str(a)], capture_output=True, text=True)
    assert out.returncode == 2 and "--paired compares exactly two results files, got 3" in out.stderr
