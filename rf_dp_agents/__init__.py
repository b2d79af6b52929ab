"""rf_dp_agents: Diffusion Policy agents for multi-robot ManiSkill3 tasks, as a Gymnasium-compatible policy plugin.

Typical use::

    from rf_dp_agents import load_policy
    policy = load_policy("checkpoints/LiftBarrier-rf_Agent0")   # a checkpoint dir or a training run dir
    action, _ = policy.predict({"img": images, "state": qpos})   # one action per env, numpy in -> numpy out

Importing this package does not import mani_skill, sapien or the task definitions; the model code
is imported on first use of ``load_policy`` or ``DiffusionPolicyAgent``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from rf_dp_agents.config import ModelConfig, tiny_model_config
from rf_dp_agents.data.normalizer import Normalizer

if TYPE_CHECKING:
    from rf_dp_agents.checkpoint import load_policy
    from rf_dp_agents.policy import DiffusionPolicyAgent

__version__ = "0.1.0"

_LAZY = {"load_policy": "rf_dp_agents.checkpoint", "DiffusionPolicyAgent": "rf_dp_agents.policy"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'rf_dp_agents' has no attribute {name!r}")


__all__ = ["DiffusionPolicyAgent", "ModelConfig", "Normalizer", "load_policy", "tiny_model_config"]
