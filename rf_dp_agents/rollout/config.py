"""``RolloutConfig``: every setting of an evaluation run, validated on construction (tyro reads it as the CLI).

Importing this module does not import mani_skill.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Literal


@dataclass
class RolloutConfig:
    """Evaluate one trained Diffusion Policy per agent of a task in the simulator: metrics, results JSON, videos."""

    task: str
    """Task id, e.g. LiftBarrier-rf (one policy per arm of the task)."""
    checkpoint_dir: str = "checkpoints"
    """Directory of training runs, one per agent: <checkpoint-dir>/<task>_Agent<i>/ (best/ is used, else last/)."""
    checkpoints: tuple[str, ...] = ()
    """Explicit checkpoint (or run) directories, one per agent in agent order (or one shared policy's);
    overrides --checkpoint-dir."""
    architecture: str | None = None
    """Which architecture's runs of --checkpoint-dir to evaluate when it holds several: local-separate
    (<task>_Agent<i>/), global-separate (<task>_Agent<i>_Global/), local-shared (<task>_Shared/), global-shared
    (<task>_Shared_Global/), or local-separate+global / local-shared+global (..._LocalGlobal/). Default: the one
    there. The policies' cameras and arms come from their checkpoints either way."""
    checkpoint_epoch: int | None = None
    """Use each agent's weights kept at this epoch (train.py --keep-every), <run>/epochs/epoch-<NNNNN>/, instead
    of best/."""
    num_episodes: int = 10
    """Number of evaluation episodes; episode k uses seed seed+k."""
    seed: int = 10000
    """Seed of the first episode."""
    num_envs: int = 1
    """Parallel envs: worker processes (one env each) on the CPU backend, vectorised envs on the GPU backend."""
    sim_backend: Literal["cpu", "gpu"] = "cpu"
    """ManiSkill simulation backend."""
    execution: Literal["direct", "topp"] = "direct"
    """'direct' sends each predicted joint target to the controller; 'topp' re-times each target with mplib's
    TOPP as RoboFactory's evaluation does (and reports the motion-planning failure rate)."""
    record_video: bool = False
    """Write one mp4 per episode: global + per-agent cameras tiled, with step count and success state."""
    video_episodes: int | None = None
    """With --record-video, record only the first this many episodes (seeds seed..seed+N-1); default: all."""
    video_dir: str = "videos"
    """Videos go to <video-dir>/<task>/."""
    output: str = "results.json"
    """Where the results JSON is written (through a temporary file and a rename), after every episode."""
    max_minutes: float | None = None
    """Stop starting episodes once this many minutes have passed since the first one was handed to an env; the
    episodes under way finish, so the seeds done are the first ones. The results file then says
    ``"complete": false`` and lists the seeds not run, which --resume runs later. Default: no limit."""
    resume: bool = False
    """Continue the run whose results file is --output: keep its episodes and run only the seeds it lacks (the
    settings that change results must be the same; without the file, start from the first seed)."""
    camera_width: int | None = None
    """Camera width in pixels; default: the width the policies were trained on (their image_shape)."""
    camera_height: int | None = None
    """Camera height in pixels; default: the height the policies were trained on."""
    max_episode_steps: int | None = None
    """Step cap per episode; default: the task's own cap."""
    sampler: Literal["ddpm", "ddim", "dpmsolver"] | None = None
    """Override the policies' inference sampler (default: each checkpoint's own, DDPM-10 for models trained since
    2026-12-07; 'ddpm' with 10 steps is the fast one that kept closed-loop accuracy: README, Success rates)."""
    num_inference_steps: int | None = None
    """Override the policies' number of denoising steps."""
    execute_steps: int | None = None
    """Execute only the first k actions of each predicted chunk (1 <= k <= the policies' action_horizon Ta), then plan
    again; RoboFactory evaluates with 6 of 8. Default: all Ta."""
    temporal_ensemble: float | None = None
    """ACT's temporal ensembling with coefficient m (ACT uses 0.01): a new chunk every step (Ta times the model
    calls), each action the mean of every chunk's prediction for that step, weights exp(-m*i), i = 0 the oldest
    chunk. Default: off."""
    deterministic: bool = False
    """Sample the diffusion noise from each policy's fixed seed (equal observations give equal actions)."""
    skip_unread_frames: bool = True
    """On the CPU backend, in episodes that record no video, render the policies' cameras only at the steps whose
    frame reaches a model (with To 2 and 8 actions per chunk: 2 steps of every 8); the others hold the last frame,
    which no model reads, so the actions are the same. --no-skip-unread-frames renders every step."""
    device: str = "auto"
    """Torch device of the policies: auto (cuda if available), cpu, cuda, cuda:1..."""
    compile_graphs: bool = True
    """On CUDA with --no-fused-graphs (or without Triton), capture the torch.compile'd U-Net in the sampling CUDA
    graphs (3.3x faster per chunk at batch 1 than the plain U-Net on an H200: README); each new batch size costs
    10-20 s of compilation at its first call."""
    fused_graphs: bool = True
    """On CUDA, run the U-Net in the sampling graphs through the fused Triton kernels instead of torch.compile
    (no compilation: a graph is ready in seconds; README, Training and inference speed). --no-fused-graphs
    compiles the U-Net with torch.compile instead."""
    graph_tf32: bool = True
    """On CUDA, compile and capture the sampling graphs with TF32 matmuls and convolutions allowed inside them only
    (the process's global precision flags are left as they are)."""
    bf16_graphs: bool = False
    """On CUDA, run the U-Net in the sampling graphs from a bfloat16 copy of its weights (README, Training and
    inference speed); measure its accuracy first with scripts/offline_eval.py --samplers ddpm:10 ddpm:10:bf16."""
    inference: Literal["auto", "shared", "per-worker"] = "auto"
    """With --num-envs > 1 on the CPU backend: 'shared' runs each model once in this process on the batched
    requests of all env workers; 'per-worker' gives every worker its own copy. auto: shared when the policies
    run on CUDA, per-worker on the CPU."""
    overlap_agents: bool = True
    """With shared inference, run different agents' model calls at the same time, each in a thread and on a CUDA
    stream of its own (a call that would build a sampling graph still runs alone). --no-overlap-agents: one call
    at a time."""
    torch_threads: int | None = None
    """Torch CPU threads per process; default: half the CPU cores divided among the processes (at least 1)."""
    progress: bool = True
    """Show a progress bar over episodes."""

    def __post_init__(self) -> None:
        self.checkpoints = tuple(str(c) for c in self.checkpoints)
        if not self.task:
            raise ValueError("RolloutConfig.task must name a task, e.g. LiftBarrier-rf")
        for name in ("num_episodes", "num_envs"):
            if int(getattr(self, name)) <= 0:
                raise ValueError(f"RolloutConfig.{name} must be positive, got {getattr(self, name)}")
        for name in ("camera_width", "camera_height", "max_episode_steps", "num_inference_steps", "torch_threads",
                     "video_episodes", "checkpoint_epoch"):
            value = getattr(self, name)
            if value is not None and int(value) <= 0:
                raise ValueError(f"RolloutConfig.{name} must be positive, got {value}")
        minutes = self.max_minutes
        if minutes is not None and not (math.isfinite(float(minutes)) and float(minutes) > 0):
            raise ValueError(f"RolloutConfig.max_minutes must be a positive number of minutes, got {minutes!r}")
        if self.execute_steps is not None and (isinstance(self.execute_steps, bool) or int(self.execute_steps) <= 0):
            raise ValueError(f"RolloutConfig.execute_steps must be a positive int, got {self.execute_steps!r}")
        if self.temporal_ensemble is not None and not math.isfinite(float(self.temporal_ensemble)):
            raise ValueError(f"RolloutConfig.temporal_ensemble must be a finite number, got {self.temporal_ensemble!r}")
        if (self.camera_width is None) != (self.camera_height is None):
            raise ValueError("RolloutConfig: give both camera_width and camera_height, or neither")
        if self.sim_backend not in ("cpu", "gpu"):
            raise ValueError(f"RolloutConfig.sim_backend must be 'cpu' or 'gpu', got {self.sim_backend!r}")
        if self.execution not in ("direct", "topp"):
            raise ValueError(f"RolloutConfig.execution must be 'direct' or 'topp', got {self.execution!r}")
        if self.sampler not in (None, "ddpm", "ddim", "dpmsolver"):
            raise ValueError(f"RolloutConfig.sampler must be 'ddpm', 'ddim' or 'dpmsolver', got {self.sampler!r}")
        if self.inference not in ("auto", "shared", "per-worker"):
            raise ValueError(f"RolloutConfig.inference must be 'auto', 'shared' or 'per-worker', got {self.inference!r}")
        if self.architecture is not None:
            from rf_dp_agents.architecture import Architecture

            Architecture.parse(self.architecture)
        if not self.output.endswith(".json"):
            raise ValueError(f"RolloutConfig.output must be a .json path, got {self.output!r}")

    @property
    def seeds(self) -> list[int]:
        """The episode seeds, seed .. seed+num_episodes-1."""
        return list(range(self.seed, self.seed + self.num_episodes))

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-serialisable dict."""
        out = dataclasses.asdict(self)
        out["checkpoints"] = list(self.checkpoints)
        return out


__all__ = ["RolloutConfig"]
