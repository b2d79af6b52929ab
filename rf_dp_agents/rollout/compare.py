"""Paired comparison of two rollout results files on the seeds both ran: per success rule, the episodes that
succeed under both, under one only, under neither, and the exact two-sided McNemar test on the discordant pairs.

Two runs evaluated on the same seeds start from the same scenes, so their difference is judged per seed, not from
two independent rates: the intervals of the two rates can overlap while one run wins on most discordant seeds.
Imports no simulator code.
"""

from __future__ import annotations

from math import comb
from typing import Any, Mapping, Sequence

from rf_dp_agents.rollout.table import contiguous_span, markdown_table

COLUMNS = ("rule", "seeds in common", "both", "first only", "second only", "neither", "McNemar p")


def mcnemar_exact(first_only: int, second_only: int) -> float:
    """Two-sided exact McNemar p-value: the binomial(b + c, 1/2) probability of a split as uneven as (b, c)."""
    if first_only < 0 or second_only < 0:
        raise ValueError(f"mcnemar_exact needs counts >= 0, got {first_only} and {second_only}")
    n = first_only + second_only
    if n == 0:
        return 1.0
    tail = sum(comb(n, k) for k in range(min(first_only, second_only) + 1)) / 2.0**n
    return min(1.0, 2.0 * tail)


def _outcomes(doc: Mapping[str, Any], rule: str, name: str) -> dict[int, bool]:
    out = {}
    for ep in doc["episodes"]:
        steps = ep.get("first_success_step", {})
        if rule not in steps:
            raise ValueError(f"{name}: episode seed {ep.get('seed')} has no success rule {rule!r}")
        out[int(ep["seed"])] = steps[rule] is not None
    return out


def paired_counts(first: Mapping[str, Any], second: Mapping[str, Any], rule: str,
                  names: tuple[str, str] = ("first", "second")) -> dict[str, Any]:
    """Counts and McNemar p of ``rule`` over the seeds both results documents ran (a seed run twice in one file
    keeps its last episode). Raises ValueError when no seed is common or a file lacks the rule."""
    a, b = _outcomes(first, rule, names[0]), _outcomes(second, rule, names[1])
    common = sorted(set(a) & set(b))
    if not common:
        raise ValueError(f"{names[0]} and {names[1]} share no seed: nothing to pair")
    both = sum(a[s] and b[s] for s in common)
    a_only = sum(a[s] and not b[s] for s in common)
    b_only = sum(b[s] and not a[s] for s in common)
    return {"rule": rule, "seeds": common, "both": both, "first_only": a_only, "second_only": b_only,
            "neither": len(common) - both - a_only - b_only, "p_value": mcnemar_exact(a_only, b_only)}


def common_rules(first: Mapping[str, Any], second: Mapping[str, Any]) -> list[str]:
    """The success rules both documents' summaries report, in the first one's order."""
    theirs = set(second["summary"]["rules"])
    return [rule for rule in first["summary"]["rules"] if rule in theirs]


def paired_table(first: Mapping[str, Any], second: Mapping[str, Any], names: tuple[str, str],
                 rules: Sequence[str] | None = None) -> str:
    """A markdown table of :func:`paired_counts` for every rule both files report (or ``rules``)."""
    rows = []
    for rule in rules or common_rules(first, second):
        c = paired_counts(first, second, rule, names)
        seeds, span = c["seeds"], contiguous_span(c["seeds"])
        rows.append(dict(zip(COLUMNS, (rule, f"{len(seeds)} ({span})" if span else str(len(seeds)), str(c["both"]), str(c["first_only"]), str(c["second_only"]),
                                       str(c["neither"]), f"{c['p_value']:.3g}"))))
    return f"first: {names[0]}\nsecond: {names[1]}\n\n" + markdown_table(rows, last=None)


__all__ = ["common_rules", "mcnemar_exact", "paired_counts", "paired_table"]
