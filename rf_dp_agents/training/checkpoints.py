"""What a run keeps on disk and how it comes back: the ``last/`` and ``best/`` snapshots with their metadata,
best-score tracking (for ``best/`` and early stopping), the run directory with ``run.json``, ``train.log`` and
the metrics logger, and resuming from ``last/`` (with the LR schedule's length).

:class:`RunKeeping` holds these as methods of the trainer (it is one of :class:`~rf_dp_agents.training.loop.Trainer`'s
bases); the file formats themselves live in :mod:`rf_dp_agents.training.state` and :mod:`rf_dp_agents.checkpoint`.
"""

from __future__ import annotations

import datetime
import importlib.metadata
import json
import logging
import platform
import sys
from pathlib import Path
from typing import Any

import torch
from torch import nn

from rf_dp_agents.config import ModelConfig
from rf_dp_agents.data import SequenceDataset
from rf_dp_agents.training.budget import schedule_steps, set_schedule_steps
from rf_dp_agents.training.config import TrainConfig
from rf_dp_agents.training.distributed import DistInfo
from rf_dp_agents.training.ema import EMA
from rf_dp_agents.training.graphed import portable_state_dict
from rf_dp_agents.training.jobs import Job
from rf_dp_agents.training.metrics import MetricsLogger
from rf_dp_agents.training.state import (
    STATE_JSON,
    CheckpointError,
    capture_rng,
    flatten,
    load_state_strict,
    load_training_state,
    load_weights,
    restore_rng,
    save_training_state,
    unflatten,
    write_json_atomic,
    write_snapshot,
)

log = logging.getLogger("rf_dp_agents.train")


def match_param_layout(optimizer: torch.optim.Optimizer) -> None:
    """Give every per-parameter optimiser state tensor (Adam's moments) its parameter's memory layout.

    A state loaded from a checkpoint is contiguous; a channels_last parameter needs channels_last moments
    for the fused AdamW kernel to read them element for element.
    """
    for param, state in optimizer.state.items():
        for key, value in state.items():
            if isinstance(value, torch.Tensor) and value.shape == param.shape and value.stride() != param.stride():
                state[key] = torch.empty_like(param, dtype=value.dtype).copy_(value)


class BestTracker:
    """Lowest validation score so far and the number of validations since it improved (for early stopping)."""

    def __init__(self, patience: int | None = None) -> None:
        self.patience = patience
        self.best: float | None = None
        self.bad = 0

    def update(self, score: float) -> bool:
        """Record a validation score; True when it is a new best (strictly lower)."""
        if self.best is None or score < self.best:
            self.best, self.bad = score, 0
            return True
        self.bad += 1
        return False

    @property
    def should_stop(self) -> bool:
        """True once ``patience`` validations in a row brought no improvement."""
        return self.patience is not None and self.bad >= self.patience


def package_versions() -> dict[str, str]:
    """Versions of Python and the packages a run depends on."""
    out = {"python": platform.python_version()}
    for name in ("rf_dp_agents", "torch", "numpy", "zarr", "safetensors", "tyro", "wandb"):
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


class RunKeeping:
    """Resume, snapshot writing, the run directory and ``run.json`` of one training run (a base of the trainer,
    which sets the attributes below)."""

    cfg: TrainConfig
    job: Job
    info: DistInfo
    run_dir: Path
    epoch: int
    global_step: int
    tracker: BestTracker
    val_action_mse: float | None
    wandb_run_id: str | None
    resumed_from: Path | None
    dataset: SequenceDataset
    model_cfg: ModelConfig
    policy: nn.Module
    ema: EMA | None
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    global_batch: int
    steps_per_epoch: int
    schedule_epochs: int
    shard_batch: int
    logger: MetricsLogger | None
    _file_handler: logging.Handler | None
    graphed: Any
    compiled: bool
    channels_last: bool
    autocast_dtype: torch.dtype | None

    @property
    def eval_model(self) -> nn.Module:
        """The weights that are validated and saved: the EMA copy, or the raw policy without EMA."""
        return self.ema.averaged if self.ema is not None else self.policy

    # ---- resume -------------------------------------------------------------------------------------------
    def _resume_or_start(self) -> None:
        last = self.run_dir / "last"
        if not self.cfg.resume:
            return
        if not (last.exists() or last.is_symlink()):
            if self.info.is_main:
                log.info("--resume: %s has no last/ checkpoint yet; starting from scratch", self.run_dir)
            return
        if not last.exists():
            raise CheckpointError(f"cannot resume: {last} points at {last.resolve()}, which does not exist")
        self._load_state(last)

    def _load_state(self, last: Path) -> None:
        tensors, meta = load_training_state(last)
        dataset_hash = meta.get("dataset_hash")
        if dataset_hash != self.dataset.content_hash:
            raise CheckpointError(
                f"cannot resume from {last}: it was trained on a dataset with hash {dataset_hash}, "
                f"but {self.job.zarr_path} has hash {self.dataset.content_hash}"
            )
        saved_model = meta.get("model", {})
        ignore = {"sampler", "num_inference_steps"}
        current = self.model_cfg.to_dict()
        differ = sorted(k for k in current if k not in ignore and _jsonish(current[k]) != _jsonish(saved_model.get(k)))
        if differ:
            raise CheckpointError(
                f"cannot resume from {last}: model settings differ from the saved run: "
                + ", ".join(f"{k} saved {saved_model.get(k)!r} now {current[k]!r}" for k in differ)
            )
        load_state_strict(last / "training_state.safetensors", self.policy, tensors, prefix="model.")
        json_path = last / STATE_JSON
        if self.ema is not None:
            load_weights(last / "model.safetensors", self.ema.averaged)
            try:
                self.ema.load_state(meta["ema"])
            except (KeyError, ValueError, TypeError) as exc:
                raise CheckpointError(f"cannot resume: {json_path} field 'ema' is missing or damaged ({exc!r})") from exc
        try:
            self.optimizer.load_state_dict(unflatten(meta["optimizer"], tensors))
            match_param_layout(self.optimizer)
            self.scheduler.load_state_dict(unflatten(meta["scheduler"], tensors))
            # Rank 0's RNG states are saved and every rank restores them; the training noise does not depend
            # on them anyway (each step and shard reseeds), so runs resume exactly on any number of processes.
            restore_rng(unflatten(meta["rng"], tensors), self.info.device)
        except (KeyError, ValueError, TypeError, RuntimeError) as exc:
            raise CheckpointError(
                f"cannot resume from {last}: optimiser/scheduler/RNG state is damaged ({exc})"
            ) from exc
        self.epoch = _count_field(meta, "epoch", json_path)
        self.global_step = _count_field(meta, "global_step", json_path)
        self._resume_schedule_length()
        if meta.get("best_metric", "val_loss") == self.cfg.best_metric:
            best = meta.get("best_score", meta.get("best_val_loss"))
            if best is not None and not isinstance(best, (int, float)):
                raise CheckpointError(f"cannot resume: {json_path} field 'best_score' must be a number, got {best!r}")
            self.tracker.best = best
            self.tracker.bad = _count_field(meta, "bad_validations", json_path, default=0)
        else:  # scores of another metric are not comparable: the next validation starts a new best
            log.info("resuming with --best-metric %s (the run so far followed %s): best/ is replaced at the next "
                     "validation", self.cfg.best_metric, meta.get("best_metric", "val_loss"))
        self.wandb_run_id = meta.get("wandb_run_id")
        self.resumed_from = last

    def _resume_schedule_length(self) -> None:
        """A resumed schedule spans the current --epochs, or, when fitted to a budget, the fitted length it had
        (within --epochs; the next epoch's fit adjusts it to this process's budget)."""
        cfg, per_epoch = self.cfg, self.steps_per_epoch
        saved = schedule_steps(self.scheduler)
        if saved is not None and cfg.fit_schedule and cfg.max_minutes is not None:
            self.schedule_epochs = min(cfg.epochs, max(self.epoch, -(-saved // per_epoch)))
        else:
            self.schedule_epochs = cfg.epochs
        set_schedule_steps(self.scheduler, self.schedule_epochs * per_epoch)

    def _open_run_dir(self) -> None:
        """On rank 0: create the run directory, its train.log, run.json and metrics logger; log the run's facts."""
        cfg, info = self.cfg, self.info
        if info.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            self._file_handler = logging.FileHandler(self.run_dir / "train.log")
            self._file_handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
            log.addHandler(self._file_handler)
            self._write_run_json(resumed=self.global_step > 0)
            wandb_settings = None
            if cfg.wandb:
                wandb_settings = dict(
                    project=cfg.wandb_project, entity=cfg.wandb_entity, mode=cfg.wandb_mode,
                    name=self.run_dir.name, config=self.cfg.to_dict(), run_id=self.wandb_run_id,
                )
            resume_step = self.global_step if self.global_step > 0 else None
            self.logger = MetricsLogger(self.run_dir, resume_step, wandb_settings)
            self.wandb_run_id = self.logger.wandb_run_id
            if self.resumed_from is not None:
                log.info("resumed from %s: epoch %d, global step %d", self.resumed_from, self.epoch, self.global_step)
            n_params = sum(p.numel() for p in self.policy.parameters())
            log.info(
                "run %s: %s, %d train / %d val windows, %d params, %d process(es) on %s, global batch %d, "
                "%d steps/epoch, epochs %d..%d",
                self.run_dir, self.job.zarr_path, self.dataset.n_train, self.dataset.n_val, n_params,
                info.world_size, info.device, self.global_batch, self.steps_per_epoch, self.epoch + 1, cfg.epochs,
            )
            log.info("precision %s, channels_last %s, torch.compile %s, CUDA graphs %s",
                     "bf16 autocast" if self.autocast_dtype is not None else "fp32", self.channels_last,
                     self.compiled, self.graphed is not None)
            if self.compiled:
                log.info("torch.compile is on: the first steps include compiling the loss (1-2 minutes on a GPU)")

    # ---- writing ----------------------------------------------------------------------------------------
    def _checkpoint_metadata(self, val_loss: float | None, train_loss: float | None) -> dict[str, Any]:
        return {
            "epoch": self.epoch,
            "global_step": self.global_step,
            "val_loss": val_loss,
            "val_action_mse": self.val_action_mse,
            "best_metric": self.cfg.best_metric,
            "train_loss": train_loss,
            "weights": "ema" if self.ema is not None else "raw",
            "dataset_hash": self.dataset.content_hash,
            "dataset": str(self.job.zarr_path),
            "agent_id": self.job.agent_id,
            "task": self.cfg.task,
            "architecture": self.job.architecture.to_dict() if self.job.architecture is not None else None,
        }

    def _save_last(self, val_loss: float | None, train_loss: float | None) -> None:
        from rf_dp_agents.checkpoint import save_checkpoint

        tensors: dict[str, torch.Tensor] = {
            f"model.{k}": v.detach().cpu().contiguous().clone() for k, v in self.policy.state_dict().items()
        }
        meta = {
            "epoch": self.epoch,
            "global_step": self.global_step,
            "best_score": self.tracker.best,
            "best_metric": self.cfg.best_metric,
            "bad_validations": self.tracker.bad,
            "dataset_hash": self.dataset.content_hash,
            "model": self.model_cfg.to_dict(),
            "ema": self.ema.state() if self.ema is not None else None,
            "optimizer": flatten(portable_state_dict(self.optimizer), "optimizer", tensors),
            "scheduler": flatten(self.scheduler.state_dict(), "scheduler", tensors),
            "rng": flatten(capture_rng(self.info.device), "rng", tensors),
            "wandb_run_id": self.wandb_run_id,
            "config": self.cfg.to_dict(),
        }
        metadata = self._checkpoint_metadata(val_loss, train_loss)

        def fill(directory: Path) -> None:
            save_checkpoint(directory, self.eval_model, metadata)
            save_training_state(directory, tensors, meta)

        write_snapshot(self.run_dir, "last", f"last-e{self.epoch:05d}", fill)

    def _save_best(self, val_loss: float | None, train_loss: float | None) -> None:
        from rf_dp_agents.checkpoint import save_checkpoint

        metadata = self._checkpoint_metadata(val_loss, train_loss)
        write_snapshot(
            self.run_dir, "best", f"best-e{self.epoch:05d}", lambda d: save_checkpoint(d, self.eval_model, metadata)
        )

    def _save_epoch_copy(self, val_loss: float | None, train_loss: float | None) -> None:
        """Keep this epoch's weights for good (``--keep-every``), beside ``last/`` and ``best/``."""
        from rf_dp_agents.checkpoint import epoch_checkpoint_dir, save_checkpoint

        save_checkpoint(epoch_checkpoint_dir(self.run_dir, self.epoch), self.eval_model,
                        self._checkpoint_metadata(val_loss, train_loss))

    def _write_run_json(self, resumed: bool) -> None:
        path = self.run_dir / "run.json"
        now = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
        doc: dict[str, Any] = {}
        if resumed and path.exists():
            try:
                doc = json.loads(path.read_text())
            except ValueError:
                doc = {}
        starts = doc.get("starts", [])
        starts.append({"time": now, "global_step": self.global_step, "epoch": self.epoch, "argv": sys.argv[1:],
                       "world_size": self.info.world_size})
        ds = self.dataset
        doc.update(
            {
                "config": self.cfg.to_dict(),
                "model": self.model_cfg.to_dict(),
                "dataset": {
                    "path": str(self.job.zarr_path),
                    "hash": ds.content_hash,
                    "shapes": {k: list(v) for k, v in ds.shapes.items()},
                    "episodes": int(len(ds.episode_ends)),
                    "train_episodes": int(ds.train_mask.sum()),
                    "val_episodes": int(ds.val_mask.sum()),
                    "train_windows": ds.n_train,
                    "val_windows": ds.n_val,
                },
                "agent_id": self.job.agent_id,
                "architecture": self.job.architecture.to_dict() if self.job.architecture is not None else None,
                "world_size": self.info.world_size,
                "global_batch": self.global_batch,
                "steps_per_epoch": self.steps_per_epoch,
                "versions": package_versions(),
                "starts": starts,
            }
        )
        write_json_atomic(path, doc)


def _count_field(meta: dict[str, Any], key: str, path: Path, default: int | None = None) -> int:
    """``meta[key]`` as a non-negative integer, or a :class:`CheckpointError` naming ``path`` and ``key``."""
    value = meta.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        missing = "is missing" if key not in meta else f"must be a non-negative integer, got {value!r}"
        raise CheckpointError(f"cannot resume: {path} field {key!r} {missing}")
    return value


def _jsonish(value: Any) -> Any:
    if isinstance(value, (tuple, list)):
        return [_jsonish(v) for v in value]
    return value


__all__ = ["BestTracker", "RunKeeping", "match_param_layout", "package_versions"]
