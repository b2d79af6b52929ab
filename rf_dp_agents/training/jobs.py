"""What to train and on what data: the (dataset, run directory) jobs a config asks for, the model config fitted
to the dataset's shapes, and where the dataset is held during training.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from rf_dp_agents.config import ModelConfig
from rf_dp_agents.data import SequenceDataset
from rf_dp_agents.training.config import (
    TrainConfig,
    default_output_dir,
    find_datasets,
    missing_dataset_message,
    resolve_dataset,
)

log = logging.getLogger("rf_dp_agents.train")


@dataclass(frozen=True)
class Job:
    """One agent to train: its dataset and its run directory."""

    zarr_path: Path
    run_dir: Path
    agent_id: int | None


def plan_jobs(cfg: TrainConfig) -> list[Job]:
    """The (dataset, run directory) pairs that ``cfg`` asks for; a missing dataset is a clear error."""
    cfg.check_data_source()
    if cfg.zarr_path is not None:
        if not cfg.zarr_path.exists():
            raise FileNotFoundError(
                f"--zarr-path {cfg.zarr_path} does not exist.\n"
                + (missing_dataset_message(cfg.data_root, cfg.task, cfg.agent_id, cfg.num_demos) if cfg.task else "")
            )
        run_dir = cfg.output_dir or default_output_dir(cfg.task, cfg.agent_id, cfg.zarr_path)
        return [Job(cfg.zarr_path, run_dir, cfg.agent_id if cfg.task else None)]
    assert cfg.task is not None
    if not cfg.all_agents:
        path = resolve_dataset(cfg.data_root, cfg.task, cfg.agent_id, cfg.num_demos)
        return [Job(path, cfg.output_dir or default_output_dir(cfg.task, cfg.agent_id, None), cfg.agent_id)]
    agents = sorted(find_datasets(cfg.data_root, cfg.task))
    if not agents:
        raise FileNotFoundError(missing_dataset_message(cfg.data_root, cfg.task, None, cfg.num_demos))
    jobs = []
    for agent in agents:
        path = resolve_dataset(cfg.data_root, cfg.task, agent, cfg.num_demos)
        run_dir = default_output_dir(cfg.task, agent, None)
        if cfg.output_dir is not None:
            run_dir = cfg.output_dir / run_dir.name
        jobs.append(Job(path, run_dir, agent))
    return jobs


def adopt_dataset_shapes(model_cfg: ModelConfig, shapes: dict[str, tuple[int, ...]], source: str) -> ModelConfig:
    """``model_cfg`` with the dataset's image shape; state or action sizes that disagree are an error."""
    (state_dim,), (action_dim,) = shapes["state"], shapes["action"]
    if action_dim != model_cfg.action_dim:
        raise ValueError(
            f"{source}: data/action has {action_dim} dims per step but the model expects action_dim="
            f"{model_cfg.action_dim} (pass --model.action-dim {action_dim} if the data is right)"
        )
    if state_dim != model_cfg.state_dim:
        raise ValueError(
            f"{source}: data/state has {state_dim} dims per step but the model expects state_dim="
            f"{model_cfg.state_dim} (pass --model.state-dim {state_dim} if the data is right)"
        )
    cameras = {key: tuple(int(v) for v in shapes[key]) for key in model_cfg.camera_keys}
    if len(set(cameras.values())) > 1:
        raise ValueError(f"{source}: the model's cameras must share one image shape, the dataset has {cameras}")
    image_shape = next(iter(cameras.values()))
    if image_shape == tuple(model_cfg.image_shape):
        return model_cfg
    changes: dict[str, Any] = {"image_shape": image_shape}
    crop = model_cfg.crop_shape
    if crop is not None:
        old_h, old_w = model_cfg.image_shape[1:]
        new_crop = (
            max(1, min(image_shape[1], round(crop[0] * image_shape[1] / old_h))),
            max(1, min(image_shape[2], round(crop[1] * image_shape[2] / old_w))),
        )
        changes["crop_shape"] = new_crop
    crop_note = ""
    if crop is not None and changes["crop_shape"] != crop:
        crop_note = f" and scaling crop_shape {crop} -> {changes['crop_shape']}"
    log.warning(
        "%s: images are %s but the model config says %s; using the dataset's shape%s",
        source, image_shape, tuple(model_cfg.image_shape), crop_note,
    )
    return dataclasses.replace(model_cfg, **changes)


def place_dataset(dataset: SequenceDataset, device: torch.device, choice: str, is_main: bool = True) -> None:
    """Move ``dataset`` to ``device`` as ``choice`` (``TrainConfig.dataset_device``) says: never for 'cpu' or a
    CPU device; for 'auto' only when it takes at most half of the GPU's free memory (logged on ``is_main``)."""
    if device.type == "cpu" or choice == "cpu":
        return
    nbytes = sum(t.numel() * t.element_size() for t in dataset.tensors)
    if choice == "auto":
        free, _ = torch.cuda.mem_get_info(device)
        if nbytes > free // 2:
            log.info("dataset (%.1f GiB) stays on the CPU: over half of the GPU's free memory", nbytes / 2**30)
            return
    dataset.to(device)
    if is_main:
        log.info("dataset (%.2f GiB) held on %s", nbytes / 2**30, device)


__all__ = ["Job", "adopt_dataset_shapes", "place_dataset", "plan_jobs"]
