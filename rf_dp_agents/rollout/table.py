"""A markdown table of success rates from rollout results files (``rollout.py --output``), one row per file.

Each row reads the file's own summary: n, the seeds run, and for every success rule the rate with its 95% Wilson
interval, plus the mean length of the successful episodes under the first rule. Imports no simulator code.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping, Sequence


LENGTH = "mean length, successes"
"""The last column: the mean episode length of the successes under the first rule."""


def load_results(path: Path) -> dict[str, Any]:
    """A rollout results JSON, checked for the keys the tables read; ValueError naming the file otherwise."""
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise ValueError(f"{path}: not a readable results JSON ({err})") from None
    for key in ("summary", "seeds", "episodes", "policies"):
        if key not in doc:
            raise ValueError(f"{path}: not a rollout results file (no {key!r} key)")
    return doc


def _execution(policy: Mapping[str, Any]) -> str:
    run = policy.get("chunk_execution") or {}
    if run.get("execute_steps") is not None:
        return f", first {run['execute_steps']} of each chunk"
    if run.get("temporal_ensemble") is not None:
        return f", temporal ensembling {run['temporal_ensemble']:g}"
    return ""


def _sampler(doc: Mapping[str, Any]) -> str:
    names = {f"{p['config']['sampler'].upper()}-{p['config']['num_inference_steps']}{_execution(p)}"
             for p in doc["policies"].values()}
    return "/".join(sorted(names))


def contiguous_span(seeds: Sequence[int]) -> str | None:
    """``"first-last"`` when the sorted ``seeds`` form one unbroken range, else None."""
    if seeds and list(seeds) == list(range(seeds[0], seeds[-1] + 1)):
        return f"{seeds[0]}-{seeds[-1]}"
    return None


def _episodes(doc: Mapping[str, Any]) -> str:
    done = sorted(ep["seed"] for ep in doc["episodes"])
    span = contiguous_span(done)
    if not done:
        text = "0"
    elif span is not None:
        text = f"{len(done)} (seeds {span})"
    else:
        text = f"{len(done)} (seeds {', '.join(map(str, done))})"
    pending = doc.get("pending_seeds") or []
    if pending:
        text += f", {len(pending)} of {len(doc['seeds'])} not run"
    return text


def _rate(rule: Mapping[str, Any]) -> str:
    if rule["success_rate"] is None:
        return "n/a"
    lo, hi = rule["ci95"]
    return f"{100 * rule['success_rate']:.0f}% ({rule['successes']}/{rule['n']}) [{100 * lo:.1f}, {100 * hi:.1f}]"


def results_row(label: str, doc: Mapping[str, Any]) -> dict[str, str]:
    """The table cells of one results document under ``label``."""
    summary = doc["summary"]
    won = summary["episode_length_successful"]["mean"]
    row = {"run": label, "sampler": _sampler(doc), "episodes": _episodes(doc)}
    row.update({rule: _rate(s) for rule, s in summary["rules"].items()})
    row[LENGTH] = "" if won is None else f"{won:.0f}"
    return row


def markdown_table(rows: Sequence[Mapping[str, str]], last: str | None = LENGTH) -> str:
    """One markdown table over ``rows`` (columns in first-seen order, ``last`` last; a missing cell is empty)."""
    columns: list[str] = []
    for row in rows:
        columns += [c for c in row if c not in columns]
    if last is not None:
        columns = [c for c in columns if c != last] + [last]
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(row.get(c, "") for c in columns) + " |" for row in rows]
    return "\n".join(lines)


def split_spec(spec: str) -> tuple[str | None, Path]:
    """``LABEL=PATH`` as (LABEL, PATH); a bare ``PATH`` as (None, PATH)."""
    label, sep, name = spec.partition("=")
    return (label, Path(name)) if sep else (None, Path(spec))


def table_of_files(specs: Sequence[str]) -> str:
    """The table of results files given as ``PATH`` or ``LABEL=PATH`` (default label: the file's folder/name)."""
    rows = []
    for spec in specs:
        label, path = split_spec(spec)
        default = f"{path.resolve().parent.name}/{path.stem}"
        rows.append(results_row(default if label is None else label, load_results(path)))
    return markdown_table(rows)


__all__ = ["contiguous_span", "load_results", "markdown_table", "results_row", "split_spec", "table_of_files"]
