"""The trainer: tyro config with presets, one train loop for 1 or N (torchrun/DDP) processes, EMA,
metrics (jsonl, wandb, loss plot), crash-safe ``last``/``best`` checkpoints and exact resume.

Entry points: ``python scripts/train.py --help`` on the command line, :func:`train` from Python.
"""

from rf_dp_agents.training.config import TrainConfig, preset_config
from rf_dp_agents.training.loop import train
from rf_dp_agents.training.state import CheckpointError
from rf_dp_agents.training.step import NonFiniteLossError, train_step

__all__ = ["CheckpointError", "NonFiniteLossError", "TrainConfig", "preset_config", "train", "train_step"]
