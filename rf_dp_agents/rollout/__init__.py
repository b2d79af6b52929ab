"""Rollout and evaluation of trained agents in the simulator: the evaluation loop, metrics and videos.

:mod:`~rf_dp_agents.rollout.metrics`, :mod:`~rf_dp_agents.rollout.video` and :mod:`~rf_dp_agents.rollout.config`
import no simulator code; :mod:`~rf_dp_agents.rollout.runner`, :mod:`~rf_dp_agents.rollout.session`,
:mod:`~rf_dp_agents.rollout.execution` and
:mod:`~rf_dp_agents.rollout.sb3` meet the simulator (and the ``envs`` package) and are imported on use.
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "RolloutConfig": "rf_dp_agents.rollout.config",
    "run_rollout": "rf_dp_agents.rollout.runner",
    "EvalSession": "rf_dp_agents.rollout.session",
    "SingleArmPolicyEnv": "rf_dp_agents.rollout.sb3",
    "make_sb3_env": "rf_dp_agents.rollout.sb3",
    "EpisodeResult": "rf_dp_agents.rollout.metrics",
    "summarize": "rf_dp_agents.rollout.metrics",
    "wilson_interval": "rf_dp_agents.rollout.metrics",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'rf_dp_agents.rollout' has no attribute {name!r}")


__all__ = sorted(_LAZY)
