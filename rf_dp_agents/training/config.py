"""The trainer's configuration: ``TrainConfig`` (a tyro dataclass), its presets, and dataset discovery.

Defaults are RoboFactory's seed config (To 2, Ta 8, T 16, lr 1e-4, batch 64 per GPU, 300 epochs, seed 100,
AdamW 0.95/0.999 with weight decay 1e-6, cosine schedule with 500 warmup steps, EMA power 0.75). A preset
(``default`` or ``tiny``) sets the starting values; flags given on the command line override them.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from rf_dp_agents.architecture import Architecture, ArchitectureName
from rf_dp_agents.config import ModelConfig, tiny_model_config

PresetName = Literal["default", "tiny"]


@dataclass
class TrainConfig:
    """Train one Diffusion Policy agent (or every agent of a task) on its zarr dataset."""

    preset: PresetName = "default"
    """Starting values: 'default' (the seed's config) or 'tiny' (small U-Net and short run, for CPU smoke tests).
    Flags given on the command line override the preset's values."""

    # ---- data -------------------------------------------------------------------------------------------
    task: str | None = None
    """Task id, e.g. LiftBarrier-rf; with --agent-id selects <data-root>/<task>_Agent<id>_<n>.zarr."""
    agent_id: int = 0
    """Which agent of the task to train (its own camera and arm)."""
    all_agents: bool = False
    """Train every agent of --task that has a dataset under --data-root, one after the other."""
    num_demos: int | None = None
    """Use the dataset made of this many demos (the <n> in the file name); default: the newest file."""
    zarr_path: Path | None = None
    """Explicit dataset path (directory or .zarr.zip); overrides --task/--agent-id discovery."""
    architecture: ArchitectureName | None = None
    """Which datasets --task discovers: <task>_Agent<i>[_Global]_<n>.zarr (separate) or <task>_Shared[_Global]_<n>.zarr
    (shared); default local-separate. The architecture itself (cameras, state and action sizes) is read from the
    dataset's attributes, written by convert_to_zarr.py --architecture; a dataset recorded otherwise is an error."""
    include_global_camera: bool = False
    """With --task: discover the datasets converted with --include-global-camera (..._LocalGlobal_<n>.zarr)."""
    data_root: Path = Path("data/zarr")
    """Directory searched for <task>_Agent<id>_<n>.zarr datasets."""
    image_key: str | None = None
    """Image array under data/ in the zarr (default: 'img', or RoboFactory's 'head_camera')."""
    val_ratio: float = 0.1
    """Share of episodes held out for validation (split by episode, seeded)."""
    max_train_episodes: int | None = None
    """Train on at most this many episodes (a seeded subset); default: all non-validation episodes."""
    dataset_device: Literal["auto", "train", "pinned", "cpu"] = "auto"
    """Where the dataset tensors live: 'train' = on the training device (GPU-resident uint8 images, batches
    gathered there); 'pinned' = page-locked host memory, each batch gathered on the CPU while the previous step
    runs and copied to the GPU ahead of its step (the CUDA-graph step still runs: for datasets that do not fit the
    GPU); 'cpu' = ordinary host memory (the eager step); 'auto' = the GPU when the data takes under half of its
    free memory, else ordinary host memory."""

    # ---- model ------------------------------------------------------------------------------------------
    model: ModelConfig = field(default_factory=ModelConfig)
    """Network and diffusion settings. image_shape is taken from the dataset when they differ."""

    # ---- optimisation -----------------------------------------------------------------------------------
    epochs: int = 300
    """Number of passes over the training windows."""
    batch_size: int = 64
    """Windows per process (per GPU) per micro-step; the global batch is batch_size * processes * grad_accum_steps."""
    grad_accum_steps: int = 1
    """Micro-steps accumulated per optimiser step. A run on N processes equals a 1-process run with N times
    the accumulation: samples, noise and timesteps are tied to the shard index, not to the process."""
    lr: float = 1e-4
    """Peak learning rate of AdamW."""
    adam_betas: tuple[float, float] = (0.95, 0.999)
    """AdamW betas."""
    weight_decay: float = 1e-6
    """AdamW weight decay."""
    lr_scheduler: Literal["cosine", "constant"] = "cosine"
    """Learning-rate schedule after warmup: cosine decay to 0 over the run, or constant."""
    lr_warmup_steps: int = 500
    """Linear warmup length in optimiser steps."""
    grad_clip_norm: float | None = None
    """Clip the global gradient norm to this value (default: no clipping; the norm is still logged)."""
    use_ema: bool = True
    """Keep an exponential moving average of the weights; it is validated and saved (Chi et al.)."""
    ema_power: float = 0.75
    """EMA warmup power: decay = 1 - (1 + step / ema_inv_gamma) ** -ema_power."""
    ema_inv_gamma: float = 1.0
    """EMA warmup inverse multiplicative factor."""
    ema_max_decay: float = 0.9999
    """Upper bound of the EMA decay."""
    ema_min_decay: float = 0.0
    """Lower bound of the EMA decay."""

    # ---- schedule of validation, checkpoints, stopping -------------------------------------------------
    val_every: int = 10
    """Validate (with the EMA weights, on held-out episodes) every this many epochs, and after the last one."""
    save_every: int = 10
    """Write <output-dir>/last every this many epochs, and after the last one."""
    keep_every: int | None = None
    """Also keep the policy weights (EMA, no optimiser state) of every this-many-th epoch, as
    <output-dir>/epochs/epoch-<NNNNN>/ (rollout.py --checkpoint-epoch N); default: keep best and last only."""
    best_metric: Literal["action_mse", "val_loss"] = "action_mse"
    """What best/ and early stopping follow: 'action_mse', the squared error of the actions the policy samples
    (with its own sampler) against the recorded ones on held-out windows (val/action_mse), or 'val_loss', the
    diffusion (noise-prediction) loss on them (val/loss), which can keep rising while the actions improve."""
    val_action_windows: int = 256
    """Held-out windows sampled for val/action_mse at each validation (the first N, spread over the processes)."""
    early_stopping_patience: int | None = None
    """Stop after this many validations without a lower --best-metric (default: never stop early)."""
    max_minutes: float | None = None
    """Wall-clock budget of this process's training in minutes: the first epoch that ends past it is treated as
    the last one (validated and saved), then the run stops. See --fit-schedule for the LR schedule."""
    fit_schedule: bool = True
    """With --max-minutes and the cosine LR schedule: after every epoch, end the schedule at the epochs that fit
    the time left (from the measured epoch and validation times; at most --epochs), so the learning rate reaches 0
    when the budget ends instead of the run stopping midway through an --epochs schedule. --no-fit-schedule keeps
    the --epochs schedule (runs before 2026-12-07 had no fitting)."""
    seed: int = 100
    """Seed of model initialisation, episode split, shuffling, noise and timesteps."""
    resume: bool = False
    """Continue from <output-dir>/last: weights, EMA, optimiser, scheduler, RNG states, epoch and step."""
    output_dir: Path | None = None
    """Run directory (default: checkpoints/<task>_Agent<id>; with --all-agents, the parent of those)."""

    # ---- hardware and processes -------------------------------------------------------------------------
    device: Literal["auto", "cuda", "cpu"] = "auto"
    """'auto' uses CUDA when available, else the CPU."""
    gpus: int = 1
    """Local processes to start: with N > 1 the script re-launches itself under torchrun (one per GPU;
    with --device cpu, N CPU processes over gloo)."""
    dist_backend: Literal["auto", "nccl", "gloo"] = "auto"
    """torch.distributed backend under torchrun: 'auto' is nccl on CUDA, gloo on the CPU."""
    dist_timeout_s: float = 600.0
    """Seconds a rank waits for the others in a collective before failing (a dead rank stops the run)."""
    deterministic: bool = False
    """torch.use_deterministic_algorithms(True) (bitwise-repeatable runs, slower on the GPU)."""
    compile: Literal["auto", "on", "off"] = "auto"
    """torch.compile the loss (forward and backward): 'auto' compiles on CUDA unless --deterministic or CUDA graphs
    are used. The first steps then take 1-2 minutes longer (speed-ups: README, Training and inference speed)."""
    tf32: bool = True
    """Allow TF32 tensor-core math for matmuls and convolutions on CUDA."""
    cuda_graphs: Literal["auto", "on", "off"] = "auto"
    """Capture the whole optimiser step (batch gather from the GPU-resident dataset, forward, backward, clipping,
    AdamW, EMA) in one CUDA graph and replay it, which removes the launch cost of its kernels. Needs one CUDA
    process, --grad-accum-steps 1, the dataset on the GPU, no --deterministic and the loss not compiled; 'auto'
    is on when these hold (then --compile auto does not compile)."""
    precision: Literal["auto", "bf16", "fp32"] = "auto"
    """Precision of the loss's forward and backward: 'bf16' runs them under torch.autocast(bfloat16) while the
    weights, gradients, optimiser and EMA stay fp32; 'auto' is bf16 with --cuda-graphs, else fp32."""
    channels_last: Literal["auto", "on", "off"] = "auto"
    """Hold the image encoder's weights (hence its activations) channels_last (NHWC), the layout of cuDNN's
    bf16 convolutions and of the Triton GroupNorm kernels; 'auto' is on with --cuda-graphs."""

    # ---- logging ----------------------------------------------------------------------------------------
    log_flush_every: int = 50
    """Steps between host synchronisations that write the per-step metrics (every step is still logged)."""
    progress: bool = True
    """Show a tqdm progress bar (rank 0)."""
    wandb: bool = False
    """Also send metrics to Weights & Biases."""
    wandb_mode: Literal["auto", "online", "offline"] = "auto"
    """wandb mode: 'auto' is online when api.wandb.ai is reachable, else offline (sync later with `wandb sync`)."""
    wandb_project: str = "rf_dp_agents"
    """wandb project name."""
    wandb_entity: str | None = None
    """wandb entity (team or user); default: your default entity."""

    def __post_init__(self) -> None:
        positive = {
            "epochs": self.epochs,
            "batch_size": self.batch_size,
            "grad_accum_steps": self.grad_accum_steps,
            "val_every": self.val_every,
            "save_every": self.save_every,
            "gpus": self.gpus,
            "log_flush_every": self.log_flush_every,
            "val_action_windows": self.val_action_windows,
        }
        for name, value in positive.items():
            if int(value) <= 0:
                raise ValueError(f"TrainConfig.{name} must be positive, got {value}")
        if self.lr <= 0:
            raise ValueError(f"TrainConfig.lr must be positive, got {self.lr}")
        if self.lr_warmup_steps < 0:
            raise ValueError(f"TrainConfig.lr_warmup_steps must be >= 0, got {self.lr_warmup_steps}")
        if not 0.0 <= self.val_ratio < 1.0:
            raise ValueError(f"TrainConfig.val_ratio must be in [0, 1), got {self.val_ratio}")
        if self.keep_every is not None and self.keep_every <= 0:
            raise ValueError(f"TrainConfig.keep_every must be positive, got {self.keep_every}")
        if self.max_minutes is not None and not self.max_minutes > 0:
            raise ValueError(f"TrainConfig.max_minutes must be positive, got {self.max_minutes}")
        if self.early_stopping_patience is not None and self.early_stopping_patience <= 0:
            raise ValueError(
                f"TrainConfig.early_stopping_patience must be positive, got {self.early_stopping_patience}"
            )
        if self.grad_clip_norm is not None and self.grad_clip_norm <= 0:
            raise ValueError(f"TrainConfig.grad_clip_norm must be positive, got {self.grad_clip_norm}")
        if not 0.0 <= self.ema_min_decay <= self.ema_max_decay < 1.0:
            raise ValueError(
                "TrainConfig needs 0 <= ema_min_decay <= ema_max_decay < 1, got "
                f"{self.ema_min_decay}, {self.ema_max_decay}"
            )
        if self.dist_timeout_s <= 0:
            raise ValueError(f"TrainConfig.dist_timeout_s must be positive, got {self.dist_timeout_s}")
        if self.zarr_path is not None and self.all_agents:
            raise ValueError(
                "TrainConfig: --all-agents discovers datasets from --task; it cannot be used with --zarr-path"
            )
        if self.agent_id < 0:
            raise ValueError(f"TrainConfig.agent_id must be >= 0, got {self.agent_id}")
        self.adam_betas = tuple(float(b) for b in self.adam_betas)  # type: ignore[assignment]

    def check_data_source(self) -> None:
        """Raise unless a dataset is named (``--task`` or ``--zarr-path``)."""
        if self.zarr_path is None and self.task is None:
            raise ValueError("TrainConfig: pass --task (with --agent-id or --all-agents) or --zarr-path")

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable dict (paths as strings, the model config nested)."""
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, ModelConfig):
                value = value.to_dict()
            elif isinstance(value, Path):
                value = str(value)
            elif isinstance(value, tuple):
                value = list(value)
            out[f.name] = value
        return out


def preset_config(name: PresetName, **overrides: Any) -> TrainConfig:
    """The config of preset ``name`` with keyword ``overrides`` applied."""
    if name == "default":
        base: dict[str, Any] = {}
    elif name == "tiny":
        base = dict(
            model=tiny_model_config(image_shape=(3, 32, 32)),
            epochs=4,
            batch_size=16,
            lr=1e-3,
            lr_warmup_steps=10,
            val_every=1,
            save_every=1,
            log_flush_every=10,
        )
    else:
        raise ValueError(f"unknown preset {name!r}; choose 'default' or 'tiny'")
    base.update(overrides)
    return TrainConfig(preset=name, **base)


def find_datasets(data_root: Path, task: str, architecture: Architecture = Architecture()) -> dict[int | None, list[Path]]:
    """Every ``<task>_Agent<i>_<n>.zarr`` (or ``.zarr.zip``) under ``data_root``, grouped by agent id; for another
    ``architecture``, its names (a shared one's under the key None)."""
    found: dict[int | None, list[Path]] = {}
    if not data_root.is_dir():
        return found
    pattern = architecture.dataset_pattern(task)
    for path in sorted(data_root.iterdir()):
        match = pattern.match(path.name)
        if match and not path.name.count(".tmp-"):
            agent = match.group("agent") if not architecture.shared else None
            found.setdefault(None if agent is None else int(agent), []).append(path)
    return found


def missing_dataset_message(
    data_root: Path, task: str, agent_id: int | None, num_demos: int | None, architecture: Architecture = Architecture()
) -> str:
    """What was looked for, where, and the commands that create the dataset."""
    agent = "<i>" if agent_id is None else str(agent_id)
    n = "<n>" if num_demos is None else str(num_demos)
    num = num_demos or 150
    stem = architecture.stem(task, 0).replace("_Agent0", f"_Agent{agent}")
    flags = "" if architecture == Architecture() else f" {architecture.cli_flags}"
    return (
        f"no dataset found: looked for {data_root}/{stem}_{n}.zarr (or .zarr.zip).\n"
        f"Create one with:\n"
        f"  python scripts/generate_data.py --task {task} --num {num}\n"
        f"  python scripts/convert_to_zarr.py --task {task} --all-agents{flags}\n"
        f"or pass --zarr-path to an existing dataset (and --data-root if it lives elsewhere)."
    )


def resolve_dataset(
    data_root: Path, task: str, agent_id: int | None, num_demos: int | None = None,
    architecture: Architecture = Architecture(),
) -> Path:
    """The dataset of ``task``/``agent_id`` (None for a shared ``architecture``): the one with ``num_demos`` demos,
    else the newest file."""
    pattern = architecture.dataset_pattern(task)
    agent_id = None if architecture.shared else agent_id

    def demos(path: Path) -> int:
        match = pattern.match(path.name)
        assert match is not None
        return int(match.group("n"))

    candidates = find_datasets(data_root, task, architecture).get(agent_id, [])
    if num_demos is not None:
        candidates = [p for p in candidates if demos(p) == num_demos]
    if not candidates:
        raise FileNotFoundError(missing_dataset_message(data_root, task, agent_id, num_demos, architecture))
    return max(candidates, key=lambda p: (p.stat().st_mtime, demos(p)))


def default_output_dir(
    task: str | None, agent_id: int | None, zarr_path: Path | None, architecture: Architecture = Architecture()
) -> Path:
    """``checkpoints/<task>_Agent<id>`` (``<task>_Shared``, ``..._Global``: ``Architecture.stem``), or
    ``checkpoints/<zarr file stem>`` when only a path was given."""
    if task is not None:
        return Path("checkpoints") / architecture.stem(task, agent_id)
    assert zarr_path is not None
    name = zarr_path.name
    for suffix in (".zip", ".zarr"):
        name = name.removesuffix(suffix)
    return Path("checkpoints") / name


__all__ = [
    "PresetName",
    "TrainConfig",
    "default_output_dir",
    "find_datasets",
    "missing_dataset_message",
    "preset_config",
    "resolve_dataset",
]
