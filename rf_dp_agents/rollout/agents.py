"""Which policies a rollout evaluates: the task's arms, each agent's checkpoint directory, the loaded policies
with the rollout's overrides, and the camera size they were trained on.

Needs mani_skill only to read a task's arms (:func:`task_num_arms`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from rf_dp_agents.checkpoint import CONFIG_NAME, epoch_checkpoint_dir, load_policy, resolve_checkpoint_dir
from rf_dp_agents.policy import DiffusionPolicyAgent
from rf_dp_agents.rollout.config import RolloutConfig


def task_num_arms(task: str) -> int:
    """Number of arms (= agents = policies) of a registered ``-rf`` task, read from its class."""
    from mani_skill.utils.registration import REGISTERED_ENVS

    spec = REGISTERED_ENVS.get(task)
    if spec is None:
        known = sorted(k for k in REGISTERED_ENVS if k.endswith("-rf"))
        raise ValueError(f"unknown task {task!r}; registered -rf tasks: {known}")
    placements = getattr(spec.cls, "arm_placements", ())
    if not placements:
        raise ValueError(f"task {task!r} ({spec.cls.__name__}) does not declare its arms (arm_placements)")
    return len(placements)


def agent_keys(num_arms: int) -> list[str]:
    """Env keys of the agents: ``panda-0``, ``panda-1``, ... (``panda-0`` for a one-arm task too)."""
    return [f"panda-{i}" for i in range(num_arms)]


def checkpoint_paths(cfg: RolloutConfig, num_arms: int) -> list[Path]:
    """The checkpoint directory of each agent; a missing one is an error naming the agent and the path searched."""
    if cfg.checkpoints:
        if len(cfg.checkpoints) != num_arms:
            raise ValueError(
                f"{cfg.task} has {num_arms} agents but {len(cfg.checkpoints)} checkpoints were given: {list(cfg.checkpoints)}"
            )
        runs = [Path(c) for c in cfg.checkpoints]
    else:
        runs = [Path(cfg.checkpoint_dir) / f"{cfg.task}_Agent{i}" for i in range(num_arms)]
    if cfg.checkpoint_epoch is not None:
        paths = [epoch_checkpoint_dir(run, cfg.checkpoint_epoch) for run in runs]
        for i, (run, path) in enumerate(zip(runs, paths)):
            if not (path / CONFIG_NAME).is_file():
                kept = sorted(int(p.name.split("-")[1]) for p in path.parent.glob("epoch-*") if p.name[6:].isdigit())
                raise FileNotFoundError(
                    f"{cfg.task}: no weights of epoch {cfg.checkpoint_epoch} for agent {i} (panda-{i}) at {path}; "
                    f"epochs kept in {run}: {kept or 'none (train with --keep-every K)'}"
                )
        return paths
    paths = []
    for i, run in enumerate(runs):
        try:
            paths.append(resolve_checkpoint_dir(run))
        except (FileNotFoundError, ValueError) as err:
            raise FileNotFoundError(
                f"{cfg.task}: no checkpoint for agent {i} (panda-{i}) at {run} "
                f"(searched {run}, {run / 'best'} and {run / 'last'}): {err}"
            ) from None
    return paths


def load_agent_policies(cfg: RolloutConfig, paths: Sequence[Path]) -> list[DiffusionPolicyAgent]:
    """Load each agent's policy through ``load_policy`` with the config's sampler, inference steps, chunk execution
    and sampling-graph choices."""
    policies = []
    for i, path in enumerate(paths):
        try:
            policies.append(load_policy(
                path, device=cfg.device, seed=cfg.seed + i, sampler=cfg.sampler,
                num_inference_steps=cfg.num_inference_steps, execute_steps=cfg.execute_steps,
                temporal_ensemble=cfg.temporal_ensemble, compile_graphs=cfg.compile_graphs,
                bf16_graphs=cfg.bf16_graphs, graph_tf32=cfg.graph_tf32,
            ))
        except ValueError as err:
            raise ValueError(f"agent {i} (panda-{i}): {err}") from None
    return policies


def camera_size(cfg: RolloutConfig, policies: Sequence[DiffusionPolicyAgent], paths: Sequence[Path]) -> tuple[int, int]:
    """(width, height) of the env cameras: the policies' training image size, checked against any override."""
    sizes = {(p.config.image_shape[2], p.config.image_shape[1]) for p in policies}
    if len(sizes) != 1:
        listing = ", ".join(
            f"agent {i} ({path}): {p.config.image_shape[2]}x{p.config.image_shape[1]}"
            for i, (p, path) in enumerate(zip(policies, paths))
        )
        raise ValueError(f"the policies were trained on different image sizes ({listing}); the env has one camera size")
    trained = sizes.pop()
    if cfg.camera_width is not None:
        asked = (int(cfg.camera_width), int(cfg.camera_height))  # type: ignore[arg-type]
        if asked != trained:
            raise ValueError(
                f"--camera-width/--camera-height {asked[0]}x{asked[1]} differ from the {trained[0]}x{trained[1]} "
                f"images the policies were trained on ({paths[0]}); leave them out to use the trained size"
            )
    return trained


__all__ = ["agent_keys", "camera_size", "checkpoint_paths", "load_agent_policies", "task_num_arms"]
