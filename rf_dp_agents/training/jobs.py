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

from rf_dp_agents.architecture import DEFAULT_ARCHITECTURE, Architecture, ArchitectureRecord, dataset_record
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
    """One model to train: its dataset, its run directory, and the dataset's architecture record (None for a
    dataset written without one: trained as one agent's, with the model's camera keys)."""

    zarr_path: Path
    run_dir: Path
    agent_id: int | None
    architecture: ArchitectureRecord | None = None


def _checked_record(path: Path, chosen: Architecture | None) -> ArchitectureRecord | None:
    """``path``'s architecture record; one that is not ``chosen`` (when a choice was made) is a clear error."""
    record = dataset_record(path)
    found = record.architecture if record is not None else Architecture(DEFAULT_ARCHITECTURE)
    if chosen is not None and found != chosen:
        where = "its zarr attribute 'architecture' says" if record is not None else "it has no architecture record, so"
        raise ValueError(
            f"{path}: {where} {found.label}, but {chosen.label} was asked for (--architecture, "
            f"--include-global-camera); convert the demos with convert_to_zarr.py {chosen.cli_flags} or leave the "
            "flags out"
        )
    return record


def plan_jobs(cfg: TrainConfig) -> list[Job]:
    """The (dataset, run directory) jobs that ``cfg`` asks for; a missing dataset, or one converted for another
    architecture than ``--architecture`` asks, is a clear error."""
    cfg.check_data_source()
    asked = cfg.architecture is not None or cfg.include_global_camera
    chosen = Architecture(cfg.architecture or DEFAULT_ARCHITECTURE, cfg.include_global_camera)
    if cfg.zarr_path is not None:
        if not cfg.zarr_path.exists():
            raise FileNotFoundError(
                f"--zarr-path {cfg.zarr_path} does not exist.\n"
                + (missing_dataset_message(cfg.data_root, cfg.task, cfg.agent_id, cfg.num_demos, chosen)
                   if cfg.task else "")
            )
        record = _checked_record(cfg.zarr_path, chosen if asked else None)
        arch = record.architecture if record is not None else chosen
        agent_id = None if arch.shared else cfg.agent_id
        run_dir = cfg.output_dir or default_output_dir(cfg.task, agent_id, cfg.zarr_path, arch)
        return [Job(cfg.zarr_path, run_dir, agent_id if cfg.task else None, record)]
    assert cfg.task is not None
    if not cfg.all_agents or chosen.shared:
        agent_id = None if chosen.shared else cfg.agent_id
        path = resolve_dataset(cfg.data_root, cfg.task, agent_id, cfg.num_demos, chosen)
        run_dir = default_output_dir(cfg.task, agent_id, None, chosen)
        if cfg.output_dir is not None:
            run_dir = cfg.output_dir / run_dir.name if cfg.all_agents else cfg.output_dir
        return [Job(path, run_dir, agent_id, _checked_record(path, chosen))]
    agents = sorted(find_datasets(cfg.data_root, cfg.task, chosen))
    if not agents:
        raise FileNotFoundError(missing_dataset_message(cfg.data_root, cfg.task, None, cfg.num_demos, chosen))
    jobs = []
    for agent in agents:
        path = resolve_dataset(cfg.data_root, cfg.task, agent, cfg.num_demos, chosen)
        run_dir = default_output_dir(cfg.task, agent, None, chosen)
        if cfg.output_dir is not None:
            run_dir = cfg.output_dir / run_dir.name
        jobs.append(Job(path, run_dir, agent, _checked_record(path, chosen)))
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
    """Place ``dataset`` as ``choice`` (``TrainConfig.dataset_device``) says for training on ``device``: 'train' on
    the device; 'pinned' in page-locked host memory; 'cpu' (or a CPU device) where it is; 'auto' on the device when
    it takes at most half of the GPU's free memory, else where it is. Logged on ``is_main``."""
    if device.type == "cpu" or choice == "cpu":
        return
    nbytes = sum(t.numel() * t.element_size() for t in dataset.tensors)
    if choice == "auto":
        free, _ = torch.cuda.mem_get_info(device)
        if nbytes > free // 2:
            log.info("dataset (%.1f GiB) stays on the CPU: over half of the GPU's free memory (--dataset-device pinned "
                     "keeps the CUDA-graph step for it)", nbytes / 2**30)
            return
    if choice == "pinned":
        try:
            dataset.pin_memory()
        except RuntimeError as err:
            reason = str(err).splitlines()[0] if str(err) else type(err).__name__
            raise ValueError(f"--dataset-device pinned: the dataset ({nbytes / 2**30:.1f} GiB) could not be "
                             f"page-locked ({reason}); use --dataset-device cpu") from None
        if is_main:
            log.info("dataset (%.2f GiB) held in page-locked host memory; batches gathered on the CPU", nbytes / 2**30)
        return
    dataset.to(device)
    if is_main:
        log.info("dataset (%.2f GiB) held on %s", nbytes / 2**30, device)


__all__ = ["Job", "adopt_dataset_shapes", "place_dataset", "plan_jobs"]
