#!/usr/bin/env python
"""Train Diffusion Policy agents: ``python scripts/train.py --task LiftBarrier-rf --agent-id 0`` (see --help).

Multi-GPU: add ``--gpus N`` (re-launches under torchrun), or start it yourself with
``python -m torch.distributed.run --standalone --nproc-per-node N scripts/train.py ...``; several nodes:
``python -m torch.distributed.run --nnodes M --nproc-per-node N --rdzv-backend c10d --rdzv-endpoint HOST:PORT
--rdzv-id RUN scripts/train.py ...`` on every node (the output directory must be on a shared file system).
"""

import sys

from rf_dp_agents.training.cli import main

if __name__ == "__main__":
    sys.exit(main())
