"""The results file of a rollout, rewritten after every episode, and ``--resume`` from it.

:class:`ResultsFile` holds the document ``scripts/rollout.py`` writes to ``--output``: it is rewritten
(temporary name + rename) after every finished episode, with ``"complete": false`` and the seeds still
pending until the run ends. :func:`load_resume` reads such a file back for ``--resume``: the episodes it holds
are kept, only the other seeds run, and the run's settings must be the ones the file was made with (every
setting that can change an episode's result; see :data:`RESUMABLE_CHANGES`).

Per-seed results do not depend on which episodes ran before or beside an episode: each episode reseeds its
process's torch RNG from its seed (the policies' sampling noise without ``--deterministic``), so a resumed run
gives every seed the result an uninterrupted run gives it.

This module imports no simulator code.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Mapping, Sequence

from rf_dp_agents.rollout.config import RolloutConfig
from rf_dp_agents.rollout.metrics import EpisodeResult, package_versions, summarize, write_json_atomic

RESUMABLE_CHANGES = (
    "max_minutes", "num_episodes", "output", "overlap_agents", "progress", "record_video", "resume", "torch_threads",
    "video_dir", "video_episodes",
)
"""Settings that may differ between an interrupted run and its ``--resume``: none changes an episode's result.
On the CPU backend ``num_envs`` and ``inference`` may change too, as long as the noise source stays the same
(see :func:`noise_source`)."""


class EpisodesFailed(RuntimeError):
    """Some seeds have no result (their env worker died on every try); the other results are in the file."""


def noise_source(cfg: RolloutConfig, mode: str) -> str:
    """Where the policies' sampling noise comes from, which fixes each seed's result: the policies' own seeds
    (``--deterministic``), or each episode's seed, drawn in the worker (``shared`` inference) or by the model."""
    if cfg.deterministic:
        return "policy seed"
    return "episode seed, shared inference" if mode == "shared" else "episode seed"


def episode_from_dict(data: Mapping[str, Any]) -> EpisodeResult:
    """Rebuild an :class:`EpisodeResult` from its :meth:`~EpisodeResult.to_dict` form."""
    return EpisodeResult(**dict(data))


def timing(episodes: Sequence[EpisodeResult], wall: float) -> dict[str, float | None]:
    """Wall time of the run (env creation included), overall steps per second, and one env's stepping rate.

    Each episode's ``extra["seconds"]`` is the time its env spent on it (its batch's time on the GPU backend).
    """
    steps = sum(ep.steps for ep in episodes)
    busy = sum(float(ep.extra.get("seconds", 0.0)) for ep in episodes)
    return {
        "wall_seconds": wall,
        "env_steps_per_second": steps / wall if wall > 0 else None,
        "env_steps_per_second_per_env": steps / busy if busy > 0 else None,
    }


def _settings(cfg_dict: Mapping[str, Any]) -> dict[str, Any]:
    ignored = set(RESUMABLE_CHANGES)
    if cfg_dict.get("sim_backend") == "cpu":
        ignored |= {"num_envs", "inference"}
    return {k: v for k, v in cfg_dict.items() if k not in ignored}


def load_resume(cfg: RolloutConfig, policies: Mapping[str, Any], noise: str) -> tuple[list[EpisodeResult], dict]:
    """The finished episodes of the results file ``cfg.output`` and the rest of its document, for ``--resume``.

    Returns ``([], {})`` when there is no file yet. A file made with other settings, other checkpoints or seeds
    outside this run is an error naming the file and the setting.
    """
    path = Path(cfg.output)
    if not path.is_file():
        return [], {}
    try:
        doc = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{path}: cannot resume: not valid JSON ({err})") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("rollout_config"), dict) or "episodes" not in doc:
        raise ValueError(f"{path}: cannot resume: not a rollout results file (no rollout_config or episodes)")
    old, new = _settings(doc["rollout_config"]), _settings(json.loads(json.dumps(cfg.to_dict())))
    for key in sorted(set(old) | set(new)):
        if old.get(key) != new.get(key):
            raise ValueError(
                f"{path}: cannot resume: it was made with {key}={old.get(key)!r}, this run has {new.get(key)!r} "
                f"(only {', '.join(RESUMABLE_CHANGES)} may change)"
            )
    if doc.get("noise", noise) != noise:
        raise ValueError(
            f"{path}: cannot resume: its sampling noise came from the {doc['noise']}, this run's from the {noise} "
            "(use the same --inference, or --deterministic)"
        )
    stored = json.loads(json.dumps(doc.get("policies", {})))
    for key, info in json.loads(json.dumps(dict(policies))).items():
        before = stored.get(key, {})
        for field in ("checkpoint", "config", "metadata"):
            if before.get(field) != info.get(field):
                raise ValueError(
                    f"{path}: cannot resume: agent {key}'s {field} differs from the file's "
                    f"({before.get(field)!r} there, {info.get(field)!r} now)"
                )
    try:
        episodes = [episode_from_dict(ep) for ep in doc["episodes"]]
    except TypeError as err:
        raise ValueError(f"{path}: cannot resume: an entry of 'episodes' is malformed ({err})") from None
    outside = sorted({ep.seed for ep in episodes} - set(cfg.seeds))
    if outside:
        raise ValueError(
            f"{path}: cannot resume: it holds seeds {outside} outside this run's {cfg.seed}..{cfg.seeds[-1]} "
            "(--seed or --num-episodes differ)"
        )
    return episodes, doc


class ResultsFile:
    """The results document of one run, kept up to date on disk: call :meth:`add` after every episode."""

    def __init__(
        self,
        cfg: RolloutConfig,
        header: Mapping[str, Any],
        previous: Sequence[EpisodeResult] = (),
        previous_doc: Mapping[str, Any] | None = None,
        noise: str = "episode seed",
    ) -> None:
        prev = dict(previous_doc or {})
        self.cfg = cfg
        self.header = dict(header)
        self.noise = noise
        self.episodes = {ep.seed: ep for ep in previous}
        self.resumed = len(self.episodes)
        self.rules: list[str] = list(prev.get("success_rules") or [])
        self.deaths: list[dict[str, Any]] = list(prev.get("worker_deaths", []))
        self.failed: dict[int, str] = {}
        self.inference: dict[str, Any] = {}
        self._wall_before = float((prev.get("timing") or {}).get("wall_seconds") or 0.0)
        self._versions = package_versions()
        self._start = time.perf_counter()

    @property
    def pending(self) -> list[int]:
        """Seeds of this run without a finished episode, in order."""
        return [s for s in self.cfg.seeds if s not in self.episodes]

    def add(self, episode: EpisodeResult) -> None:
        """Keep ``episode`` and rewrite the file."""
        if not self.rules:
            self.rules = list(episode.first_success_step)
        self.episodes[episode.seed] = episode
        self.failed.pop(episode.seed, None)
        self.write()

    def add_death(self, death: Mapping[str, Any]) -> None:
        """Record a worker death (its seed, cause and try) and rewrite the file."""
        self.deaths.append(dict(death))
        self.write()

    def document(self, complete: bool = False) -> dict[str, Any]:
        """The results document: run settings, summary over the finished episodes, episodes in seed order."""
        episodes = [self.episodes[s] for s in sorted(self.episodes)]
        wall = self._wall_before + (time.perf_counter() - self._start)
        rules = self.rules or ["success"]
        return {
            **self.header,
            "seeds": self.cfg.seeds,
            "success_rules": rules,
            "complete": complete and not self.pending,
            "pending_seeds": self.pending,
            "failed_seeds": [{"seed": s, "error": e} for s, e in sorted(self.failed.items())],
            "summary": summarize(episodes, rules, topp=self.cfg.execution == "topp"),
            "episodes": [ep.to_dict() for ep in episodes],
            "resumed_episodes": self.resumed,
            "worker_deaths": self.deaths,
            "noise": self.noise,
            "rollout_config": self.cfg.to_dict(),
            "versions": self._versions,
            "timing": timing(episodes, wall),
            "inference": self.inference,
        }

    def write(self, complete: bool = False) -> dict[str, Any]:
        """Write the document to ``cfg.output`` (temporary name + rename); returns it."""
        doc = self.document(complete)
        write_json_atomic(self.cfg.output, doc)
        return doc


__all__ = ["EpisodesFailed", "RESUMABLE_CHANGES", "ResultsFile", "episode_from_dict", "load_resume", "noise_source", "timing"]
