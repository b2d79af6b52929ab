"""Command line of the trainer: preset-aware tyro parsing, the ``--gpus N`` torchrun re-launch, exit codes.

``--preset`` is read first; its config becomes tyro's default, so every other flag given overrides it.
With ``--gpus N`` (N > 1) outside torchrun, the same command is re-run as
``python -m torch.distributed.run --standalone --nproc-per-node N -m rf_dp_agents.training.cli ...``.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from typing import Sequence

import tyro

from rf_dp_agents.training.config import TrainConfig, preset_config
from rf_dp_agents.training.distributed import torchrun_command, under_torchrun

log = logging.getLogger("rf_dp_agents.train")

DESCRIPTION = """Train Diffusion Policy agents on RoboFactory-style zarr datasets.

  python scripts/train.py --task LiftBarrier-rf --agent-id 0            # one agent, one GPU
  python scripts/train.py --task LiftBarrier-rf --all-agents --gpus 4   # every agent, 4 GPUs (torchrun)
  python scripts/train.py --task LiftBarrier-rf --agent-id 0 --resume   # continue from last/
  python scripts/train.py --preset tiny --zarr-path demo.zarr --device cpu   # CPU smoke run
"""


def _preset_from_argv(argv: Sequence[str]) -> str:
    for i, arg in enumerate(argv):
        if arg == "--preset" and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith("--preset="):
            return arg.split("=", 1)[1]
    return "default"


def parse_args(argv: Sequence[str] | None = None) -> TrainConfig:
    """Parse ``argv`` (default: ``sys.argv[1:]``) into a :class:`TrainConfig` on top of the chosen preset."""
    args = list(sys.argv[1:] if argv is None else argv)
    preset = _preset_from_argv(args)
    if preset not in ("default", "tiny"):
        raise SystemExit(f"error: unknown --preset {preset!r}; choose 'default' or 'tiny'")
    default = preset_config(preset)  # type: ignore[arg-type]
    return tyro.cli(TrainConfig, default=default, args=args, description=DESCRIPTION)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``scripts/train.py``: returns the process exit code."""
    args = list(sys.argv[1:] if argv is None else argv)
    cfg = parse_args(args)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", stream=sys.stderr)
    if cfg.gpus > 1 and not under_torchrun():
        command = torchrun_command(cfg.gpus, "-m", ["rf_dp_agents.training.cli", *args])
        log.info("re-launching under torchrun: %s", " ".join(command))
        return subprocess.call(command)
    from rf_dp_agents.training.loop import train
    from rf_dp_agents.training.state import CheckpointError
    from rf_dp_agents.training.step import NonFiniteLossError

    rank = 0
    try:
        rank = int(os.environ.get("RANK", "0"))
        if rank != 0:
            logging.getLogger().setLevel(logging.ERROR)
        train(cfg)
    except (FileNotFoundError, FileExistsError, ValueError, CheckpointError, NonFiniteLossError) as exc:
        if rank == 0:
            print(f"error: {exc}", file=sys.stderr)
        return 1
    except RuntimeError as exc:
        if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
            raise
        print(
            f"error: rank {rank} stopped: {exc}\n(when another rank died or stopped responding for --dist-timeout-s "
            f"seconds, every rank stops like this; its own log names the first cause)",
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
