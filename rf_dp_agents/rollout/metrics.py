"""Evaluation metrics and the results JSON: Wilson intervals, episode-length statistics, atomic writing.

An episode is summarised by an :class:`EpisodeResult`: its seed, the number of env steps it ran, and for
each success rule of the task (``success``, plus ``success_strict`` for LiftBarrier) the first env step
at which the rule held (``None`` when it never did). An episode counts as a success for a rule when the
rule held at any step, as in RoboFactory's evaluation, which stops at the first success.

This module imports no simulator code (mani_skill, sapien, envs).
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
import json
import math
import os
import platform
import statistics
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

Z_95 = 1.959963984540054
"""Two-sided 95% standard-normal quantile."""

VERSION_PACKAGES = (
    "rf_dp_agents",
    "torch",
    "numpy",
    "mani_skill",
    "sapien",
    "mplib",
    "gymnasium",
    "stable-baselines3",
)
"""Packages whose installed versions go into the results JSON."""


def wilson_interval(successes: int, n: int, z: float = Z_95) -> tuple[float, float]:
    """Wilson score interval ``(low, high)`` for ``successes`` out of ``n`` trials (95% by default).

    ``n == 0`` gives the uninformative ``(0.0, 1.0)``.
    """
    successes, n = int(successes), int(n)
    if n < 0 or successes < 0 or successes > n:
        raise ValueError(f"wilson_interval needs 0 <= successes <= n, got successes={successes}, n={n}")
    if n == 0:
        return 0.0, 1.0
    p = successes / n
    z2 = z * z
    denom = 1.0 + z2 / n
    centre = (p + z2 / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


@dataclass
class EpisodeResult:
    """What one evaluated episode produced."""

    seed: int
    """Seed passed to ``env.reset``."""
    steps: int
    """Env steps the episode ran (it stops once every success rule has held, or at the step cap)."""
    first_success_step: dict[str, int | None]
    """Per success rule: the first env step (1-based) at which it held, or None."""
    planning_calls: int = 0
    """TOPP re-timings attempted (``--execution topp``), summed over agents."""
    planning_failures: int = 0
    """TOPP re-timings that failed (the arm then held its position for one step)."""
    video: str | None = None
    """Path of the episode's mp4, when recorded."""
    extra: dict[str, Any] = field(default_factory=dict)
    """Anything else worth keeping per episode (e.g. the env index in a vectorised batch)."""

    def success(self, rule: str) -> bool:
        """Whether success rule ``rule`` held at some step of the episode."""
        return self.first_success_step.get(rule) is not None

    def length(self, rule: str) -> int:
        """Episode length under ``rule``: the first success step, or the steps run when it never held."""
        first = self.first_success_step.get(rule)
        return self.steps if first is None else int(first)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-serialisable dict."""
        return dataclasses.asdict(self)


def condition_flags(info: Mapping[str, Any], rules: Sequence[str]) -> list[str]:
    """The env's boolean ``info`` entries that are not success rules (e.g. LiftBarrier-rf's ``is_grasped_0``,
    ``is_grasped_1``, ``is_level``: the parts of its strict rule), in name order."""
    boolean = ("torch.bool", "bool")
    return sorted(k for k, v in info.items() if k not in rules and str(getattr(v, "dtype", "")) in boolean)


@dataclass
class ConditionCount:
    """Per episode, how many env steps each condition flag held and whether it held at the last step: the evidence
    of which part of a rule failed (kept in an episode's ``extra["conditions"]``)."""

    held: dict[str, int] = field(default_factory=dict)
    at_end: dict[str, bool] = field(default_factory=dict)

    def add(self, flags: Mapping[str, bool]) -> None:
        """Count one env step's flags."""
        for name, value in flags.items():
            self.held[name] = self.held.get(name, 0) + int(bool(value))
            self.at_end[name] = bool(value)

    def to_dict(self) -> dict[str, dict[str, Any]]:
        """``{flag: {"steps_held": n, "at_end": bool}}``."""
        return {name: {"steps_held": self.held[name], "at_end": self.at_end[name]} for name in self.held}


def length_stats(lengths: Sequence[int]) -> dict[str, float | int | None]:
    """Mean, median, min and max of episode lengths (all None for an empty list)."""
    if not lengths:
        return {"mean": None, "median": None, "min": None, "max": None}
    return {
        "mean": float(statistics.fmean(lengths)),
        "median": float(statistics.median(lengths)),
        "min": int(min(lengths)),
        "max": int(max(lengths)),
    }


def rule_summary(episodes: Sequence[EpisodeResult], rule: str, z: float = Z_95) -> dict[str, Any]:
    """Success rate, Wilson interval, n and episode-length statistics of ``episodes`` under ``rule``."""
    n = len(episodes)
    wins = [ep for ep in episodes if ep.success(rule)]
    low, high = wilson_interval(len(wins), n, z)
    return {
        "success_rate": (len(wins) / n) if n else None,
        "ci95": [low, high],
        "successes": len(wins),
        "n": n,
        "episode_length": length_stats([ep.length(rule) for ep in episodes]),
        "episode_length_successful": length_stats([ep.length(rule) for ep in wins]),
    }


def summarize(
    episodes: Sequence[EpisodeResult], rules: Sequence[str], topp: bool = False, z: float = Z_95
) -> dict[str, Any]:
    """Metrics of a run: one :func:`rule_summary` per success rule; the motion-planning failure rate for TOPP.

    The first rule is the primary one; its rate and lengths are repeated at the top level.
    """
    if not rules:
        raise ValueError("summarize needs at least one success rule")
    per_rule = {rule: rule_summary(episodes, rule, z) for rule in rules}
    primary = per_rule[rules[0]]
    out: dict[str, Any] = {
        "n_episodes": len(episodes),
        "primary_rule": rules[0],
        "success_rate": primary["success_rate"],
        "ci95": primary["ci95"],
        "episode_length": primary["episode_length"],
        "episode_length_successful": primary["episode_length_successful"],
        "rules": per_rule,
        "env_steps": int(sum(ep.steps for ep in episodes)),
    }
    if topp:
        calls = sum(ep.planning_calls for ep in episodes)
        fails = sum(ep.planning_failures for ep in episodes)
        out["motion_planning"] = {
            "calls": int(calls),
            "failures": int(fails),
            "failure_rate": (fails / calls) if calls else None,
            "episodes_with_failure": int(sum(1 for ep in episodes if ep.planning_failures > 0)),
        }
    return out


def package_versions(names: Iterable[str] = VERSION_PACKAGES) -> dict[str, str | None]:
    """Installed versions of ``names`` (None where a package is not installed), plus Python's."""
    versions: dict[str, str | None] = {"python": platform.python_version()}
    for name in names:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def write_json_atomic(path: str | os.PathLike, doc: Mapping[str, Any]) -> Path:
    """Write ``doc`` as indented JSON to ``path`` through a temporary sibling file and a rename."""
    path = Path(path)
    try:
        text = json.dumps(doc, indent=2, allow_nan=False)
    except (TypeError, ValueError) as err:
        raise ValueError(f"results for {path} are not plain JSON: {err}") from None
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.tmp-", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(text + "\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def format_summary(summary: Mapping[str, Any]) -> str:
    """Human-readable lines for a :func:`summarize` result."""
    lines = []
    for rule, s in summary["rules"].items():
        rate = "n/a" if s["success_rate"] is None else f"{100 * s['success_rate']:.1f}%"
        lo, hi = s["ci95"]
        lines.append(f"{rule}: {rate} ({s['successes']}/{s['n']}), 95% CI [{100 * lo:.1f}%, {100 * hi:.1f}%]")
    length = summary["episode_length"]
    won = summary["episode_length_successful"]
    if length["mean"] is not None:
        text = f"episode length: mean {length['mean']:.1f}, median {length['median']:.1f}"
        if won["mean"] is not None:
            text += f"; successful: mean {won['mean']:.1f}, median {won['median']:.1f}"
        lines.append(text)
    mp = summary.get("motion_planning")
    if mp is not None:
        rate = "n/a" if mp["failure_rate"] is None else f"{100 * mp['failure_rate']:.2f}%"
        lines.append(f"motion-planning failures: {rate} ({mp['failures']}/{mp['calls']} TOPP calls)")
    return "\n".join(lines)


__all__ = [
    "ConditionCount",
    "EpisodeResult",
    "VERSION_PACKAGES",
    "Z_95",
    "condition_flags",
    "format_summary",
    "length_stats",
    "package_versions",
    "rule_summary",
    "summarize",
    "wilson_interval",
    "write_json_atomic",
]
