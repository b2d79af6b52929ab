"""Which policies a rollout evaluates: the task's arms, each agent's checkpoint directory (or the one shared
policy's), the loaded policies with the rollout's overrides, and the camera size they were trained on.

The architecture (``rf_dp_agents.architecture``) is found from the run directories under ``--checkpoint-dir``
(``<task>_Agent<i>[_Global|_LocalGlobal]/`` or ``<task>_Shared[...]/``) and checked against the task's arm count
from the checkpoints' own records. Needs mani_skill only to read a task's arms (:func:`task_num_arms`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from rf_dp_agents.architecture import Architecture, ArchitectureRecord, policy_record
from rf_dp_agents.checkpoint import (
    CONFIG_NAME,
    epoch_checkpoint_dir,
    load_policy,
    read_checkpoint_config,
    resolve_checkpoint_dir,
)
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


def architecture_runs(cfg: RolloutConfig, num_arms: int) -> tuple[Architecture, list[Path]]:
    """The architecture of the runs under ``cfg.checkpoint_dir`` (``cfg.architecture``, else the one whose run
    directories are there; none: local-separate) and its run directories, one per agent or one shared."""
    root = Path(cfg.checkpoint_dir)

    def runs(arch: Architecture) -> list[Path]:
        return [root / arch.stem(cfg.task)] if arch.shared else [root / arch.stem(cfg.task, i) for i in range(num_arms)]

    if cfg.architecture is not None:
        arch = Architecture.parse(cfg.architecture)
        return arch, runs(arch)
    found = [arch for arch in Architecture.all() if runs(arch)[0].exists()]
    if len(found) > 1:
        listing = "; ".join(f"{arch.label} ({runs(arch)[0]})" for arch in found)
        raise ValueError(
            f"{root} holds {cfg.task} runs of {len(found)} architectures: {listing}; choose one with --architecture "
            "or name the checkpoints with --checkpoints"
        )
    arch = found[0] if found else Architecture()
    return arch, runs(arch)


def checkpoint_records(paths: Sequence[Path]) -> list[ArchitectureRecord | None]:
    """Each checkpoint's architecture record (None for one saved without it)."""
    return [policy_record(read_checkpoint_config(p), str(Path(p) / CONFIG_NAME)) for p in paths]


def check_arm_count(task: str, paths: Sequence[Path], num_arms: int) -> None:
    """The checkpoints drive the task's ``num_arms`` arms: one shared policy for all of them, or one per arm, each
    trained for a task of as many arms; otherwise an error naming both counts and the checkpoint."""
    records = checkpoint_records(paths)
    shared = [(p, r) for p, r in zip(paths, records) if r is not None and r.architecture.shared]
    if shared:
        path, record = shared[0]
        if len(paths) != 1:
            raise ValueError(f"{path} is a shared policy that drives every arm alone, but {len(paths)} checkpoints "
                             f"were given: {[str(p) for p in paths]}")
        if len(record.agents) != num_arms:
            raise ValueError(
                f"{path / CONFIG_NAME}: a shared policy for {len(record.agents)} arms ({', '.join(record.agents)}), "
                f"but {task} has {num_arms} arms"
            )
        return
    if len(paths) != num_arms:
        raise ValueError(f"{task} has {num_arms} agents but {len(paths)} checkpoints were given: {[str(p) for p in paths]}")
    for i, (path, record) in enumerate(zip(paths, records)):
        if record is not None and (record.num_agents != num_arms or record.agent_id != i):
            raise ValueError(
                f"{path / CONFIG_NAME}: the policy of agent {record.agent_id} of a task with {record.num_agents} "
                f"arms, given for agent {i} of {task}, which has {num_arms} arms"
            )


def checkpoint_paths(cfg: RolloutConfig, num_arms: int) -> list[Path]:
    """The checkpoint directory of each agent, or of the one shared policy; a missing one is an error naming the
    agent and the path searched, and checkpoints for another arm count an error naming both counts."""
    if cfg.checkpoints:
        runs = [Path(c) for c in cfg.checkpoints]
    else:
        _, runs = architecture_runs(cfg, num_arms)
    if cfg.checkpoint_epoch is not None:
        paths = [epoch_checkpoint_dir(run, cfg.checkpoint_epoch) for run in runs]
        for i, (run, path) in enumerate(zip(runs, paths)):
            if not (path / CONFIG_NAME).is_file():
                kept = sorted(int(p.name.split("-")[1]) for p in path.parent.glob("epoch-*") if p.name[6:].isdigit())
                raise FileNotFoundError(
                    f"{cfg.task}: no weights of epoch {cfg.checkpoint_epoch} for agent {i} (panda-{i}) at {path}; "
                    f"epochs kept in {run}: {kept or 'none (train with --keep-every K)'}"
                )
        check_arm_count(cfg.task, paths, num_arms)
        return paths
    paths = []
    for i, run in enumerate(runs):
        try:
            paths.append(resolve_checkpoint_dir(run))
        except (FileNotFoundError, ValueError) as err:
            who = "the shared policy" if run.name.startswith(f"{cfg.task}_Shared") else f"agent {i} (panda-{i})"
            raise FileNotFoundError(
                f"{cfg.task}: no checkpoint for {who} at {run} "
                f"(searched {run}, {run / 'best'} and {run / 'last'}): {err}"
            ) from None
    check_arm_count(cfg.task, paths, num_arms)
    return paths


def policy_labels(policies: Sequence[DiffusionPolicyAgent], num_arms: int) -> list[str]:
    """A name per policy for the results: its agent key, or ``panda-0+panda-1...`` for a shared policy."""
    labels = []
    for i, policy in enumerate(policies):
        record = policy_record(policy.metadata)
        labels.append("+".join(record.agents) if record is not None and record.architecture.shared
                      else agent_keys(num_arms)[i])
    return labels


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
                fused_graphs=cfg.fused_graphs, bf16_graphs=cfg.bf16_graphs, graph_tf32=cfg.graph_tf32,
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


__all__ = [
    "agent_keys",
    "architecture_runs",
    "camera_size",
    "check_arm_count",
    "checkpoint_paths",
    "checkpoint_records",
    "load_agent_policies",
    "policy_labels",
    "task_num_arms",
]
